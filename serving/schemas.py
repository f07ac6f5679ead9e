"""The API's request and response bodies: the OpenAPI document generated from these is the contract."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StringConstraints, model_validator

# Ids are what the event logs used (the warehouse keeps them as text): 1-128 characters, none in U+0000-U+0020 or
# U+007F-U+009F (no whitespace, no control character): the rule the ingest applies (als_store/sql/ingest_id_rule.sql), so
# every id it keeps can be requested. Integers in a JSON batch are accepted as ids too (within int64, as the
# model stores them).
MAX_ID_LENGTH = 128
ID_PATTERN = r"^[^\x00-\x20\x7f-\x9f]+$"
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

IdText = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
IdNumber = Annotated[StrictInt, Field(ge=INT64_MIN, le=INT64_MAX)]
Source = Literal["als", "fold_in", "popularity"]


class ScoredItem(BaseModel):
    item_id: int | str
    score: float = Field(description="ALS or cosine score, or the item's number of users for popularity.")


class ModelRef(BaseModel):
    name: str
    version: int | None = Field(description="Registered model version (null when serving a bundle directory).")


class UserRecommendations(BaseModel):
    user_id: int | str
    source: Source = Field(description="als: a user the model knows; fold_in: a new user folded in from recent "
                                       "warehouse events; popularity: everybody else.")
    recommendations: list[ScoredItem] = Field(description="Best first; items the user interacted with excluded.")


class RecommendationsResponse(UserRecommendations):
    model: ModelRef


class Contribution(BaseModel):
    item_id: int | str = Field(description="An item the user interacted with.")
    contribution: float = Field(description="Its term of the explained score: c_uj * y_i^T W_u y_j.")
    share: float | None = Field(description="contribution / explained_score (all of the user's items sum to 1); "
                                            "null when the explained score is 0.")


class ItemExplanation(BaseModel):
    item_id: int | str = Field(description="A recommended item, in the order of `recommendations`.")
    explained_score: float = Field(description="The sum of the contributions of all the user's items: the item's "
                                               "score for the user solved from those items (fold_in: its score).")
    because: list[Contribution] = Field(description="The user's items that contributed most, largest first.")
    other_share: float | None = Field(description="The share of the user's other items together (1 - the listed "
                                                  "shares); null when the explained score is 0.")


class Explanation(BaseModel):
    method: Literal["contributions", "popularity"] = Field(
        description="contributions: the score split over the user's own items (Hu, Koren, Volinsky 2008, section "
                    "5, as implicit's explain); popularity: the list is the most popular items, nothing per user "
                    "to split.")
    note: str = Field(description="What the explanation is, for this user, in words.")
    items: list[ItemExplanation] = Field(description="One per recommended item (empty for popularity).")


class ExplainedRecommendationsResponse(RecommendationsResponse):
    explanation: Explanation


class RerankResponse(BaseModel):
    user_id: int | str
    source: Source = Field(description="Who scored the candidates, as for GET /recommendations: als, fold_in, or "
                                       "popularity (ranked by number of users).")
    model: ModelRef
    ranked: list[ScoredItem] = Field(description="The candidates the model knows, best first (each once); at "
                                                 "most n.")
    seen: list[int | str] = Field(description="Candidates left out because the user interacted with them "
                                              "(exclude_seen), in request order.")
    unknown: list[int | str] = Field(description="Candidates the model does not know, left out (not ranked), in "
                                                 "request order: append them where they belong for you.")


class BatchResponse(BaseModel):
    model: ModelRef
    results: list[UserRecommendations] = Field(description="One entry per requested user id, in request order.")


class SimilarItemsResponse(BaseModel):
    item_id: int | str
    similar_items: list[ScoredItem] = Field(description="By cosine similarity of item factors; the item excluded.")
    model: ModelRef


class HealthResponse(BaseModel):
    status: Literal["ok"] = "ok"


class ReadyResponse(BaseModel):
    ready: bool
    reason: str = Field(description="'serving', or why there is no model to serve.")
    model: ModelRef | None = None
    last_poll_at: str | None = None
    last_error: str | None = None
    fold_in: dict[str, Any] | None = Field(default=None, description="State of the recent-events snapshot.")


class ModelInfo(BaseModel):
    name: str
    version: int | None
    kind: Literal["als", "popularity"] = Field(description="als: ALS factors (popularity for users it does not "
                                                           "know); popularity: the most popular items for everybody, "
                                                           "known users' seen items excluded (no similar items).")
    source: Literal["mlflow", "bundle_dir"]
    uri: str
    run_id: str | None = None
    trained_at: str | None = None
    registered_at: str | None = None
    loaded_at: str
    ndcg_at_10: float | None = Field(default=None, description="On the holdout the model was evaluated on.")
    training_window_start: str | None = None
    training_window_end: str | None = None
    n_users: int
    n_items: int
    n_interactions: int = Field(description="Nonzero (user, item) pairs the model was trained on.")
    factors: int | None = Field(description="ALS latent factors; null for a popularity model.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="The bundle's own metadata.")
    tags: dict[str, str] = Field(default_factory=dict, description="The registered version's tags.")


class ErrorResponse(BaseModel):
    detail: str


def _whole(value):
    return int(value) if isinstance(value, float) and value.is_integer() else value


def _whole_numbers(data, ids_field: str):
    """JSON has one kind of number, and JSON Schema's "integer" (the document's type) includes 18.0: read it as
    18. 18.5, NaN, infinities, booleans and strings are still refused."""
    if isinstance(data, dict):
        data = dict(data)
        if isinstance(data.get(ids_field), list):
            data[ids_field] = [_whole(value) for value in data[ids_field]]
        if "n" in data:
            data["n"] = _whole(data["n"])
    return data


def batch_request_model(max_n: int, max_batch: int) -> type[BaseModel]:
    """The batch body with this deployment's limits in its schema (they come from the environment)."""

    class BatchRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        user_ids: list[IdNumber | IdText] = Field(min_length=1, max_length=max_batch)
        n: StrictInt = Field(default=min(10, max_n), ge=1, le=max_n)

        @model_validator(mode="before")
        @classmethod
        def whole_numbers(cls, data):
            return _whole_numbers(data, "user_ids")

    return BatchRequest


def rerank_request_model(max_batch: int) -> type[BaseModel]:
    """The re-rank body: up to ``max_batch`` candidates (the deployment's limit on ids per request)."""

    class RerankRequest(BaseModel):
        model_config = ConfigDict(extra="forbid")

        item_ids: list[IdNumber | IdText] = Field(min_length=1, max_length=max_batch, description=(
            "The candidates to rank (e.g. search results); a repeated id counts once."))
        n: StrictInt | None = Field(default=None, ge=1, le=max_batch, description=(
            "How many to return; all the ranked candidates when absent."))
        exclude_seen: StrictBool = Field(default=True, description="Leave out candidates the user interacted with.")

        @model_validator(mode="before")
        @classmethod
        def whole_numbers(cls, data):
            return _whole_numbers(data, "item_ids")

    return RerankRequest
