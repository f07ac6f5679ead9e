"""What the endpoints do, without HTTP: pick the live model once per request, route each user to ALS, fold-in
or popularity, and turn index arrays into external ids."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from serving.fold_in import WarehouseEvents
from serving.model_source import LoadedModel, ModelWatcher


class NotReady(Exception):
    """No model is loaded; the message says why (no champion, store unreachable, load failed...)."""


class UnknownItem(KeyError):
    pass


@dataclass(frozen=True)
class UserResult:
    user_id: int | str
    source: str
    item_ids: list
    scores: list[float]


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

    def needs_fold_in(self, model: LoadedModel, user_ids: list) -> bool:
        """Whether any of these users would be folded in (unknown to the model, with recent events): that
        costs a least-squares solve against every item factor, too long to run on the event loop."""
        if self.events is None:
            return False
        unknown = [u for u, row in zip(user_ids, model.bundle.users.lookup(user_ids).tolist()) if row < 0]
        return bool(unknown) and any(h is not None for h in self.events.histories(unknown))

    def recommend(self, model: LoadedModel, user_ids: list, n: int) -> list[UserResult]:
        rows = model.bundle.users.lookup(user_ids)
        scored = model.scorer.recommend_rows(rows, n)
        unknown = np.flatnonzero(rows < 0)
        if len(unknown) and self.events is not None:
            histories = self.events.histories([user_ids[i] for i in unknown])
            with_events = [(pos, history) for pos, history in zip(unknown.tolist(), histories) if history is not None]
            if with_events:
                folded = model.scorer.fold_in([history for _, history in with_events], n)
                positions = [pos for pos, _ in with_events]
                scored.item_index[positions] = folded.item_index
                scored.scores[positions] = folded.scores
                scored.sources[positions] = folded.sources
        item_ids = model.bundle.item_ids
        results = []
        for pos, user_id in enumerate(user_ids):
            index = scored.item_index[pos]
            keep = index >= 0
            results.append(UserResult(user_id, str(scored.sources[pos]), item_ids[index[keep]].tolist(),
                                      scored.scores[pos][keep].tolist()))
        return results

    def similar_items(self, model: LoadedModel, item_id: str, n: int) -> tuple[list, list[float]]:
        """(external item ids, cosine scores) of the items closest to ``item_id``."""
        index = int(model.bundle.items.lookup([item_id])[0])
        if index < 0:
            raise UnknownItem(item_id)
        ids, scores = model.scorer.similar_items(index, n)
        return model.bundle.item_ids[ids].tolist(), scores.tolist()
