"""What the endpoints do, without HTTP: pick the live model once per request, route each user to ALS, fold-in
or popularity, and turn index arrays into external ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from als_core.bundle import SOURCE_ALS, SOURCE_FOLD_IN, SOURCE_POPULARITY, NoItemFactors
from serving.fold_in import EventReading, WarehouseEvents
from serving.model_source import LoadedModel, ModelWatcher


class NotReady(Exception):
    """No model is loaded; the message says why (no champion, store unreachable, load failed...)."""


class UnknownItem(KeyError):
    pass


class NoSimilarItems(Exception):
    """The live model is a popularity model: it has no item factors to compare items with."""


@dataclass(frozen=True)
class UserResult:
    user_id: int | str
    source: str
    item_ids: list
    scores: list[float]


@dataclass(frozen=True)
class Plan:
    """Where each requested user's answer comes from: ``rows`` into the model (-1: unknown) and, for unknown
    users with recent warehouse events, those events (fold-in)."""

    user_ids: list
    rows: np.ndarray
    histories: list

    @property
    def needs_fold_in(self) -> bool:
        """Fold-in solves against every item factor: too long to run on the event loop."""
        return any(history is not None for history in self.histories)

    @property
    def scores_items(self) -> bool:
        """Whether answering scores the catalogue (a known user or a fold-in), rather than reading the popularity
        list (microseconds, fine on the event loop)."""
        return self.needs_fold_in or bool((self.rows >= 0).any())


@dataclass(frozen=True)
class UserState:
    """How one user is scored: ``source``, the model row (-1: none) and the interactions that define the user
    (one row over the model's items: training row, folded-in events, or the seen items a popularity model
    excludes; None when there are none)."""

    source: str
    row: int
    interactions: sp.csr_matrix | None


@dataclass(frozen=True)
class Reranked:
    user_id: int | str
    source: str
    item_ids: list
    scores: list[float]
    seen: list
    unknown: list


EXPLAIN_TOP = 5  # the user's items listed per explained recommendation


def reading_for(model: LoadedModel) -> EventReading:
    """The events a model folds new users in from: those since its training-window end, weighted as its
    training data was (the bundle's weighting)."""
    return EventReading(model.fold_in_since, model.bundle.weighting)


class RecommendationService:
    def __init__(self, watcher: ModelWatcher, events: WarehouseEvents | None):
        self.watcher = watcher
        self.events = events

    def model(self) -> LoadedModel:
        """The live model, read once: a request uses the same version from start to end even if a swap
        happens meanwhile."""
        model = self.watcher.current
        if model is None:
            raise NotReady(self.watcher.status.reason)
        return model

    def plan(self, model: LoadedModel, user_ids: list) -> Plan:
        """Route each user: model row (known) or, for unknown users, their recent events (fold-in) if any. A
        popularity model folds nobody in: unknown users get its list as it is."""
        rows = model.bundle.users.lookup(user_ids)
        histories: list = [None] * len(user_ids)
        unknown = np.flatnonzero(rows < 0).tolist()
        if unknown and self.events is not None and model.bundle.model is not None:
            found = self.events.histories([user_ids[i] for i in unknown], reading_for(model))
            for pos, history in zip(unknown, found):
                histories[pos] = history
        return Plan(list(user_ids), rows, histories)

    def recommend(self, model: LoadedModel, plan: Plan, n: int) -> list[UserResult]:
        scored = model.scorer.recommend_rows(plan.rows, n)
        positions = [pos for pos, history in enumerate(plan.histories) if history is not None]
        if positions:
            folded = model.scorer.fold_in([plan.histories[pos] for pos in positions], n)
            scored.item_index[positions] = folded.item_index
            scored.scores[positions] = folded.scores
            scored.sources[positions] = folded.sources
        item_ids = model.bundle.item_ids
        results = []
        for pos, user_id in enumerate(plan.user_ids):
            index = scored.item_index[pos]
            keep = index >= 0
            results.append(UserResult(user_id, str(scored.sources[pos]), item_ids[index[keep]].tolist(),
                                      scored.scores[pos][keep].tolist()))
        return results

    def similar_items(self, model: LoadedModel, item_id: str, n: int) -> tuple[list, list[float]]:
        """(external item ids, cosine scores) of the items closest to ``item_id``. NoSimilarItems for a
        popularity model, UnknownItem for an item the model does not know."""
        if model.bundle.model is None:
            raise NoSimilarItems(item_id)
        index = int(model.bundle.items.lookup([item_id])[0])
        if index < 0:
            raise UnknownItem(item_id)
        try:
            ids, scores = model.scorer.similar_items(index, n)
        except NoItemFactors:
            raise NoSimilarItems(item_id) from None
        return model.bundle.item_ids[ids].tolist(), scores.tolist()

    def user_state(self, model: LoadedModel, plan: Plan, pos: int = 0) -> UserState:
        """The routing of ``recommend`` for one planned user, with the interactions it went by."""
        row = int(plan.rows[pos])
        scorer = model.scorer
        if row >= 0 and scorer.has_history[row]:
            source = SOURCE_ALS if model.bundle.model is not None else SOURCE_POPULARITY
            return UserState(source, row, model.bundle.seen[row])
        if plan.histories[pos] is not None and model.bundle.model is not None:
            folded, interactions = scorer.fold_in_rows([plan.histories[pos]])
            if folded:
                return UserState(SOURCE_FOLD_IN, row, interactions)
        return UserState(SOURCE_POPULARITY, row, None)

    def explain(self, model: LoadedModel, plan: Plan, result: UserResult, top: int = EXPLAIN_TOP) -> dict:
        """Why ``result`` (``recommend``'s answer for the one planned user) holds its items: for ALS and fold-in,
        each item's score split over the user's own items (`ALS.explain`); for popularity, what the list is."""
        state = self.user_state(model, plan)
        if result.source == SOURCE_POPULARITY or state.source != result.source:
            return {"method": "popularity", "note": _popularity_note(model, state), "items": []}
        index = model.bundle.items.lookup(result.item_ids)
        if not len(index):
            totals, tops = np.empty(0), []
        else:
            totals, tops, _ = model.bundle.model.explain(None, state.interactions, index, N=top)
        item_ids = model.bundle.item_ids
        items = []
        for item_id, total, contributions in zip(result.item_ids, totals, tops):
            values = np.array([c for _, c in contributions], dtype=np.float64)
            shares = _shares(np.append(values, float(total) - values.sum()), float(total))
            items.append({"item_id": item_id, "explained_score": float(total), "other_share": shares[-1],
                          "because": [{"item_id": item_ids[j].item(), "contribution": c, "share": share}
                                      for (j, c), share in zip(contributions, shares)]})
        if result.source == SOURCE_FOLD_IN:
            note = ("a new user folded in from recent events: each score is split over those events' items (the "
                    "folded-in vector solves exactly against them, so explained_score is the score)")
        else:
            note = ("each score is split over the user's training interactions, for the user solved from them "
                    "against the served item factors (implicit's explain); explained_score can differ slightly "
                    "from the score, which comes from the trained user factors")
        return {"method": "contributions", "note": note, "items": items}

    def rerank(self, model: LoadedModel, plan: Plan, candidates: list, n: int | None,
               exclude_seen: bool = True) -> Reranked:
        """The caller's candidate items ranked for the one planned user, scored as ``recommend`` scores that user
        (ALS, fold-in or popularity rank). Candidates the model does not know are returned apart, as sent;
        with ``exclude_seen``, so are those the user interacted with (by the bundle's ids)."""
        bundle = model.bundle
        index = bundle.items.lookup(candidates)
        unknown = list(dict.fromkeys(c for c, i in zip(candidates, index.tolist()) if i < 0))
        known = np.array(list(dict.fromkeys(i for i in index.tolist() if i >= 0)), dtype=np.int64)
        state = self.user_state(model, plan)
        seen = np.empty(0, np.int64)
        if exclude_seen and state.interactions is not None:
            seen = known[np.isin(known, state.interactions.indices)]
            known = known[~np.isin(known, seen)]
        ranked, scores = np.empty(0, np.int64), np.empty(0, np.float32)
        n_out = len(known) if n is None else min(int(n), len(known))
        if n_out and state.source == SOURCE_POPULARITY:
            ranked = known[np.argsort(bundle.popularity.rank_of[known])][:n_out]
            scores = bundle.popularity.item_scores[ranked]
        elif n_out:
            folded = state.source == SOURCE_FOLD_IN
            ranked, scores = bundle.model.recommend(
                0 if folded else state.row, state.interactions if folded else None, N=n_out, items=known,
                filter_already_liked_items=False, recalculate_user=folded)
            scores = scores[ranked >= 0]
            ranked = ranked[ranked >= 0]
        item_ids = bundle.item_ids
        return Reranked(plan.user_ids[0], state.source, item_ids[ranked].tolist(),
                        np.asarray(scores, np.float64).tolist(), item_ids[seen].tolist(), unknown)


def _shares(values: np.ndarray, total: float) -> list[float | None]:
    """values / total, None where that is not a finite number (a zero or vanishing total)."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        shares = values / total
    return [float(s) if np.isfinite(s) else None for s in shares]


def _popularity_note(model: LoadedModel, state: UserState) -> str:
    kind = "the most popular items (the score is the number of users of the item): "
    if model.bundle.model is None:
        return kind + "the served model is a popularity model, it has no factors to split a score over"
    if state.row >= 0:
        return kind + "the user has no training interactions to split a score over"
    return kind + "the model does not know this user and has no recent events of theirs to fold in"
