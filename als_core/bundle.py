"""Everything a served model needs, as arrays and JSON: factors, id maps, seen items and the popularity fallback.

The bundle speaks external ids (whatever the event logs used: 64-bit integers or strings). It is the single
place where "known user -> ALS, seen items excluded; unknown user -> popularity" is decided, so the offline
evaluation scores models exactly as the API serves them.

Two kinds share the format (``kind`` in bundle.json): ``als`` (factors + the popularity fallback) and
``popularity`` (no factors: everybody gets the popularity ranking, known users without their seen items). A
popularity bundle is the baseline the evaluation measures, made servable when ALS loses to it.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._arrays import sorted_unique
from .als import ALS
from .diversity import beyond_accuracy, item_popularity
from .metrics import evaluate_ranking
from .popularity import PopularityRecommender
from .weighting import DEFAULT_WEIGHTING, EventWeighting

FORMAT_VERSION = 1
SOURCE_ALS = "als"
SOURCE_FOLD_IN = "fold_in"
SOURCE_POPULARITY = "popularity"
KIND_ALS = "als"
KIND_POPULARITY = "popularity"
KINDS = (KIND_ALS, KIND_POPULARITY)


class NoItemFactors(ValueError):
    """What needs item factors (similar items, fold-in) asked of a popularity bundle, which has none."""


def as_int64_or_str(ids) -> np.ndarray:
    """External ids as an int64 or unicode array, their kind kept (strings are not parsed); never object,
    because npz must load without pickle."""
    arr = np.asarray(ids)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    if arr.dtype.kind in "UO":
        return arr.astype(str)
    raise TypeError(f"ids must be integers or strings, got dtype {arr.dtype}")


class IdIndex:
    """External id -> row index, vectorised (sorted ids + searchsorted); unknown ids map to -1.

    Query ids are converted to the index's kind first, so "42" finds the integer id 42 (a URL path gives
    strings) and anything that does not parse is simply unknown."""

    def __init__(self, ids: np.ndarray):
        self.ids = as_int64_or_str(ids)
        self._order = np.argsort(self.ids, kind="stable")
        self._sorted = self.ids[self._order]
        if np.any(self._sorted[1:] == self._sorted[:-1]):
            raise ValueError("ids must be unique")

    def __len__(self) -> int:
        return len(self.ids)

    def _coerce(self, query) -> tuple[np.ndarray, np.ndarray]:
        values = np.atleast_1d(np.asarray(query, dtype=object if not isinstance(query, np.ndarray) else None))
        if self.ids.dtype.kind == "i" and values.dtype.kind == "i":  # signed integers already: no per-value parse
            return values.astype(np.int64), np.ones(len(values), dtype=bool)
        if self.ids.dtype.kind == "i":
            parsed = np.zeros(len(values), dtype=np.int64)
            ok = np.zeros(len(values), dtype=bool)
            for pos, value in enumerate(values.tolist()):
                try:
                    parsed[pos] = int(value)
                    ok[pos] = not isinstance(value, float) or float(value).is_integer()
                except (TypeError, ValueError, OverflowError):
                    pass
            return parsed, ok
        return values.astype(str), np.ones(len(values), dtype=bool)

    def lookup(self, query) -> np.ndarray:
        values, ok = self._coerce(query)
        if len(self._sorted) == 0:
            return np.full(len(values), -1, dtype=np.int64)
        pos = np.searchsorted(self._sorted, values)
        pos = np.minimum(pos, len(self._sorted) - 1)
        found = ok & (self._sorted[pos] == values)
        return np.where(found, self._order[pos], -1).astype(np.int64)


@dataclass
class Recommendations:
    """Top-N for a list of users: ``item_index`` rows (-1 padded) into ``item_ids``, and where each came from."""

    item_index: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    item_ids: np.ndarray = field(repr=False)

    def items_of(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """External item ids and scores of one row, padding removed."""
        keep = self.item_index[row] >= 0
        return self.item_ids[self.item_index[row][keep]], self.scores[row][keep]


class ModelBundle:
    """A served model: its id maps, each user's seen items, a popularity ranking and, for kind ``als``, the
    trained ALS model (``model`` is None for kind ``popularity``). ``weighting`` is how the events it was
    trained on were weighted, so that fold-in weighs a new user's events the same way (the defaults when
    not given)."""

    def __init__(self, model: ALS | None, user_ids, item_ids, seen: sp.csr_matrix, popularity: PopularityRecommender,
                 metadata: dict | None = None, weighting: EventWeighting = DEFAULT_WEIGHTING):
        self.model = model
        self.kind = KIND_ALS if model is not None else KIND_POPULARITY
        self.users = IdIndex(user_ids)
        self.items = IdIndex(item_ids)
        self.seen = sp.csr_matrix(seen, dtype=np.float32)
        self.popularity = popularity
        self.metadata = dict(metadata or {})
        self.weighting = weighting
        if model is not None and (model.n_users != len(self.users) or model.n_items != len(self.items)):
            raise ValueError(
                f"model is {model.n_users} users x {model.n_items} items but the id maps have "
                f"{len(self.users)} users and {len(self.items)} items")
        if popularity.n_items != len(self.items):
            raise ValueError(f"the popularity ranking has {popularity.n_items} items, the id map {len(self.items)}")
        if self.seen.shape != (len(self.users), len(self.items)):
            raise ValueError(f"seen items matrix has shape {self.seen.shape}, expected "
                             f"{(len(self.users), len(self.items))}")
        # a user whose training row is empty has zero factors: the fallback serves it better
        self._has_history = np.diff(self.seen.indptr) > 0

    @functools.cached_property
    def item_popularity(self) -> np.ndarray:
        """Share of the training users who used each item (`als_core.diversity.item_popularity` of ``seen``),
        counted once: the evaluation judges a bundle's lists and its popularity baseline's against it."""
        return item_popularity(self.seen)

    @classmethod
    def build(cls, model: ALS, user_ids, item_ids, train_user_items, metadata: dict | None = None,
              weighting: EventWeighting = DEFAULT_WEIGHTING) -> "ModelBundle":
        train = sp.csr_matrix(train_user_items)
        return cls(model, user_ids, item_ids, train, PopularityRecommender().fit(train), metadata, weighting)

    @classmethod
    def build_popularity(cls, user_ids, item_ids, train_user_items, metadata: dict | None = None,
                         weighting: EventWeighting = DEFAULT_WEIGHTING) -> "ModelBundle":
        """A popularity bundle counted on ``train_user_items`` (distinct users per item, ties by summed weight)."""
        train = sp.csr_matrix(train_user_items)
        return cls(None, user_ids, item_ids, train, PopularityRecommender().fit(train), metadata, weighting)

    def as_popularity(self, metadata: dict | None = None) -> "ModelBundle":
        """This bundle's own popularity baseline as a bundle of kind ``popularity``: the same id maps, seen
        items, ranking and weighting, so it recommends exactly what ``recommend_many(strategy="popularity")``
        measured."""
        return ModelBundle(None, self.user_ids, self.item_ids, self.seen, self.popularity, metadata, self.weighting)

    @property
    def user_ids(self) -> np.ndarray:
        return self.users.ids

    @property
    def item_ids(self) -> np.ndarray:
        return self.items.ids

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self.model is not None:
            self.model.save(directory / "als")
        self.popularity.save(directory / "popularity.npz")
        np.savez(directory / "ids.npz", user_ids=self.user_ids, item_ids=self.item_ids)
        # uncompressed: zlib over millions of indices took longer than the rest of the registration
        sp.save_npz(directory / "seen.npz", self.seen, compressed=False)
        (directory / "bundle.json").write_text(json.dumps(
            {"format_version": FORMAT_VERSION, "kind": self.kind, "weighting": self.weighting.as_dict(),
             "metadata": self.metadata}, indent=2, default=str))
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> "ModelBundle":
        directory = Path(directory)
        info = json.loads((directory / "bundle.json").read_text())
        if info.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"unsupported bundle format {info.get('format_version')!r} in {directory}")
        kind = info.get("kind", KIND_ALS)  # bundles written before kinds existed are ALS
        if kind not in KINDS:
            raise ValueError(f"unknown bundle kind {kind!r} in {directory}")
        with np.load(directory / "ids.npz", allow_pickle=False) as ids:
            user_ids, item_ids = ids["user_ids"], ids["item_ids"]
        model = ALS.load(directory / "als") if kind == KIND_ALS else None
        return cls(model, user_ids, item_ids, sp.load_npz(directory / "seen.npz"),
                   PopularityRecommender.load(directory / "popularity.npz"), info.get("metadata", {}),
                   EventWeighting.from_dict(info.get("weighting")))

    # ------------------------------------------------------------------ serving
    def recommend_many(self, user_ids, n: int = 10, strategy: str = "model") -> Recommendations:
        """Top-``n`` per external user id. Known users get ALS scores with their seen items excluded;
        unknown users (and users with no training history) get the popularity list. ``strategy="popularity"``
        serves everybody from popularity (the baseline), still excluding known users' seen items; a bundle
        of kind ``popularity`` always does."""
        if strategy not in ("model", "popularity"):
            raise ValueError(f"strategy must be 'model' or 'popularity', got {strategy!r}")
        if self.model is None:
            strategy = "popularity"
        rows = self.users.lookup(user_ids)
        known = rows >= 0
        known[known] = self._has_history[rows[known]]
        fallback = ~known if strategy == "model" else np.ones(len(rows), dtype=bool)
        if not fallback.any():  # every user scored by the model (the evaluation's and the table's case)
            ids, best = self.model.recommend(rows, self.seen, N=n)
            return Recommendations(ids.astype(np.int64, copy=False), best.astype(np.float32, copy=False),
                                   np.full(len(rows), SOURCE_ALS, dtype="<U10"), self.item_ids)
        n_out = min(int(n), len(self.items))
        item_index = np.full((len(rows), n_out), -1, dtype=np.int64)
        scores = np.full((len(rows), n_out), -np.inf, dtype=np.float32)
        sources = np.full(len(rows), SOURCE_POPULARITY, dtype="<U10")
        if strategy == "model" and known.any():
            ids, best = self.model.recommend(rows[known], self.seen, N=n)
            item_index[known], scores[known] = ids, best
            sources[known] = SOURCE_ALS
        fallback_rows = rows[fallback]
        seen_rows = self.seen[np.where(fallback_rows >= 0, fallback_rows, 0)]
        if (fallback_rows < 0).any():  # unknown users have seen nothing
            seen_rows = sp.diags((fallback_rows >= 0).astype(np.float32)) @ seen_rows
        ids, best = self.popularity.recommend(np.arange(len(fallback_rows)), seen_rows.tocsr(), N=n)
        item_index[fallback], scores[fallback] = ids, best
        return Recommendations(item_index, scores, sources, self.item_ids)

    def fold_in(self, item_ids, weights=None, n: int = 10) -> tuple[np.ndarray, np.ndarray, str]:
        """Recommendations for a user the model does not know, from that user's own events: one exact
        least-squares solve against the item factors (``ALS.recalculate_user``). Items the model does not
        know are ignored; with none left (or for a popularity bundle), the popularity list is returned."""
        index = self.items.lookup(item_ids)
        values = np.ones(len(index), dtype=np.float32) if weights is None else np.asarray(weights, np.float32)
        if values.shape != index.shape:
            raise ValueError("weights must have one value per item id")
        keep = (index >= 0) & (values > 0)
        if not keep.any() or self.model is None:
            ids, best = self.popularity.recommend(0, None, N=n, filter_already_liked_items=False)
            return (*self._external(ids, best), SOURCE_POPULARITY)
        row = sp.csr_matrix((values[keep], (np.zeros(keep.sum(), dtype=np.int64), index[keep])),
                            shape=(1, len(self.items)))
        ids, best = self.model.recommend(0, row, N=n, recalculate_user=True)
        return (*self._external(ids, best), SOURCE_FOLD_IN)

    def similar_items(self, item_id, n: int = 10) -> tuple[np.ndarray, np.ndarray]:
        if self.model is None:
            raise NoItemFactors("a popularity model has no item factors: no similar items")
        index = self.items.lookup([item_id])[0]
        if index < 0:
            raise KeyError(f"unknown item {item_id!r}")
        ids, best = self.model.similar_items(int(index), N=n)
        return self._external(ids, best)

    def _external(self, index: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """External ids and their scores, padding (-1 / -inf) dropped from both."""
        keep = index >= 0
        return self.item_ids[index[keep]], scores[keep]


def holdout_users(holdout_user_ids) -> np.ndarray:
    """The distinct users of a holdout, sorted: the rows of the lists `evaluate_on_holdout` judges."""
    return sorted_unique(as_int64_or_str(holdout_user_ids))


def evaluate_on_holdout(bundle: ModelBundle, holdout_user_ids, holdout_item_ids, k: int = 10,
                        strategy: str = "model", lists: Recommendations | None = None) -> dict[str, float]:
    """Ranking metrics of ``bundle`` on held-out (user, item) pairs given in external ids, and the
    beyond-accuracy measures of the same top-k lists (`als_core.diversity.beyond_accuracy`: coverage,
    entropy, novelty, share of the 1% most popular items, against the bundle's training popularity).

    Every holdout user is scored exactly as serving would (unknown users get the popularity fallback).
    Held-out items the bundle does not know still count in the ideal DCG and recall denominators: a model
    cannot be rewarded for a smaller catalogue.

    ``lists``: the bundle's lists for ``holdout_users(holdout_user_ids)``, row for row, when the caller already
    has them (scored deeper than ``k`` for another use, or read back from where they were stored); only their
    first ``k`` columns are judged. By default they are scored here (``recommend_many``, ``strategy``)."""
    users = as_int64_or_str(holdout_user_ids)
    items = as_int64_or_str(holdout_item_ids)
    if users.shape != items.shape or users.ndim != 1:
        raise ValueError("holdout user and item ids must be 1-D arrays of the same length")
    if len(users) == 0:
        raise ValueError("the holdout is empty")
    unique_users, user_rows = sorted_unique(users, return_inverse=True)
    item_index = bundle.items.lookup(items)
    unknown = item_index < 0
    # unknown items get columns past the catalogue: never recommended, but counted as relevant
    _, unknown_cols = sorted_unique(items[unknown], return_inverse=True)
    columns = item_index.copy()
    columns[unknown] = len(bundle.items) + unknown_cols
    n_columns = len(bundle.items) + (unknown_cols.max() + 1 if unknown.any() else 0)
    test = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (user_rows, columns)),
                         shape=(len(unique_users), n_columns))
    test.sum_duplicates()
    test.data[:] = 1
    if lists is None:
        lists = bundle.recommend_many(unique_users, n=k, strategy=strategy)
    elif len(lists.item_index) != len(unique_users):
        raise ValueError(f"lists has {len(lists.item_index)} rows for {len(unique_users)} holdout users")
    ranked = np.full((len(unique_users), k), -1, dtype=np.int64)  # a catalogue smaller than k leaves -1s
    depth = min(k, lists.item_index.shape[1])
    ranked[:, :depth] = lists.item_index[:, :depth]
    result = evaluate_ranking(ranked, test, n_items=n_columns, k=k)
    # coverage over the bundle's own catalogue
    result.update(beyond_accuracy(ranked, bundle.seen, k=k, popularity=bundle.item_popularity))
    result["users_fallback"] = int((lists.sources == SOURCE_POPULARITY).sum())
    return result
