"""What the endpoints do, without HTTP: pick the live model once per request, route each user to ALS, fold-in
or popularity, and turn index arrays into external ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from als_core.bundle import NoItemFactors
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
