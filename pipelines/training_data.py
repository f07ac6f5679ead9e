"""What a training run consumes: id maps, the train matrix and a holdout of external (user, item) pairs.

Stored as arrays (npz, no pickles) and JSON. The pipeline publishes each build as a snapshot
directory and points `latest_dir(settings)` (a symlink) at it with one atomic rename, so a reader
sees either the previous build or the new one, never half of one. No Dagster import.

Ids are int64 when every id of that axis is a canonical decimal integer (so nothing is lost by the
conversion: '7' yes, '007' or 'abc' no), else unicode strings. Holdout pairs use the same types.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import scipy.sparse as sp

from als_core.weighting import DEFAULT_WEIGHTING, EventWeighting
from als_store.settings import Settings

FORMAT_VERSION = 1
_ARRAYS = "arrays.npz"
_META = "meta.json"
SPLITS = ("temporal", "random")


@dataclass
class TrainingData:
    user_ids: np.ndarray  # row i of `train` is user user_ids[i]
    item_ids: np.ndarray  # column j is item item_ids[j]
    train: sp.csr_matrix  # float32 users x items, summed event weights
    holdout_user_ids: np.ndarray  # external ids, one per holdout pair
    holdout_item_ids: np.ndarray
    window_start: str  # YYYY-MM-DD, inclusive
    window_end: str
    split: str  # 'temporal' or 'random(fraction=..., seed=...)'
    weighting: EventWeighting = DEFAULT_WEIGHTING  # how `train`'s values were made from the events

    def __post_init__(self) -> None:
        self.train = sp.csr_matrix(self.train, dtype=np.float32)
        if self.train.shape != (len(self.user_ids), len(self.item_ids)):
            raise ValueError(
                f"train has shape {self.train.shape} but there are {len(self.user_ids)} users and "
                f"{len(self.item_ids)} items"
            )
        if len(self.holdout_user_ids) != len(self.holdout_item_ids):
            raise ValueError("holdout_user_ids and holdout_item_ids differ in length")
        for name in ("user_ids", "item_ids", "holdout_user_ids", "holdout_item_ids"):
            kind = np.asarray(getattr(self, name)).dtype.kind
            if kind not in "iU":
                raise ValueError(f"{name} must be int64 or unicode, got dtype kind {kind!r}")

    @property
    def holdout_pairs(self) -> int:
        return len(self.holdout_user_ids)

    @functools.cached_property  # save, load and the model assets all ask; the arrays are never changed
    def holdout_fingerprint(self) -> str:
        """sha256 (hex) of the sorted holdout pairs as text: equal holdouts, equal fingerprints,
        whatever the id dtype.

        The lines f"{user}\t{item}\n" in the order of sorted (str(user), str(item)) tuples, hashed as one
        text."""
        lines = _tab_separated_lines(_as_text(self.holdout_user_ids), _as_text(self.holdout_item_ids))
        return hashlib.sha256(lines).hexdigest()

    def meta(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "window_start": self.window_start,
            "window_end": self.window_end,
            "split": self.split,
            "weighting": self.weighting.as_dict(),
            "users": len(self.user_ids),
            "items": len(self.item_ids),
            "nnz": int(self.train.nnz),
            "holdout_pairs": self.holdout_pairs,
            "holdout_fingerprint": self.holdout_fingerprint,
        }

    def save(self, directory: str | Path) -> Path:
        """Write into `directory`, replacing it: the files go to a temporary sibling first, which
        is then renamed into place."""
        directory = Path(directory)
        directory.parent.mkdir(parents=True, exist_ok=True)
        staging = directory.parent / f".{directory.name}.tmp-{uuid.uuid4().hex}"
        staging.mkdir()
        try:
            np.savez(
                staging / _ARRAYS,
                user_ids=self.user_ids,
                item_ids=self.item_ids,
                train_data=self.train.data,
                train_indices=self.train.indices,
                train_indptr=self.train.indptr,
                train_shape=np.asarray(self.train.shape, dtype=np.int64),
                holdout_user_ids=self.holdout_user_ids,
                holdout_item_ids=self.holdout_item_ids,
            )
            (staging / _META).write_text(json.dumps(self.meta(), indent=2) + "\n", encoding="utf-8")
            _replace_dir(staging, directory)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return directory

    @classmethod
    def load(cls, directory: str | Path) -> TrainingData:
        directory = Path(directory)
        if not (directory / _META).is_file():
            raise FileNotFoundError(f"no training data in {directory}: materialise `training_data` first")
        meta = json.loads((directory / _META).read_text(encoding="utf-8"))
        if meta.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{directory}: format_version {meta.get('format_version')}, expected {FORMAT_VERSION}")
        with np.load(directory / _ARRAYS, allow_pickle=False) as arrays:
            train = sp.csr_matrix(
                (arrays["train_data"], arrays["train_indices"], arrays["train_indptr"]),
                shape=tuple(int(n) for n in arrays["train_shape"]),
            )
            data = cls(
                user_ids=arrays["user_ids"],
                item_ids=arrays["item_ids"],
                train=train,
                holdout_user_ids=arrays["holdout_user_ids"],
                holdout_item_ids=arrays["holdout_item_ids"],
                window_start=meta["window_start"],
                window_end=meta["window_end"],
                split=meta["split"],
                weighting=EventWeighting.from_dict(meta.get("weighting")),
            )
        if data.holdout_fingerprint != meta["holdout_fingerprint"]:
            raise ValueError(f"{directory}: holdout does not match its recorded fingerprint (damaged files?)")
        return data


def _replace_dir(source: Path, target: Path) -> None:
    if target.is_symlink():
        target.unlink()
    if not target.exists():
        os.replace(source, target)
        return
    aside = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
    os.replace(target, aside)
    os.replace(source, target)
    shutil.rmtree(aside, ignore_errors=True)


# --------------------------------------------------------------------------- where builds live


def latest_dir(settings: Settings) -> Path:
    """The current training data: a symlink to the newest snapshot (read it, do not write into it)."""
    return settings.training_dir / "latest"


def publish(data: TrainingData, settings: Settings, keep: int = 5) -> Path:
    """Save `data` as a new snapshot, point `latest_dir` at it atomically, keep the newest `keep`.

    Returns the snapshot directory (stable, unlike `latest`: record it where a run must be traced)."""
    snapshots = settings.training_dir / "snapshots"
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%S%fZ")
    snapshot = data.save(snapshots / f"{stamp}-{data.holdout_fingerprint[:12]}")
    latest = latest_dir(settings)
    if latest.exists() and not latest.is_symlink():  # a directory left by hand: replace it
        shutil.rmtree(latest)
    link = settings.training_dir / f".latest-{uuid.uuid4().hex}"
    link.symlink_to(snapshot.relative_to(settings.training_dir), target_is_directory=True)
    os.replace(link, latest)
    for old in sorted(p for p in snapshots.iterdir() if not p.name.startswith("."))[:-keep]:
        if old != snapshot:
            shutil.rmtree(old, ignore_errors=True)
    return snapshot


def _as_text(ids: np.ndarray) -> pa.StringArray:
    """Ids as Arrow strings, what ``str(id)`` gives for each: integers formatted by Arrow in C++ (numpy's
    strings and a Python string per line took 0.25 s per 200k pairs); text through Python strings, because
    Arrow's conversion of a numpy unicode array stops at a NUL."""
    ids = np.asarray(ids)
    if ids.dtype.kind in "iu":
        return pc.cast(pa.array(ids), pa.string())
    return pa.array(ids.astype(str).tolist(), type=pa.string())


def _tab_separated_lines(users: pa.StringArray, items: pa.StringArray) -> bytes:
    """The UTF-8 of the lines f"{user}\t{item}\n", in the order of the sorted (user, item) pairs (Arrow
    orders strings by their UTF-8 bytes, which is the code point order Python sorts them in)."""
    if len(users) > 1:
        later, earlier, later_item, earlier_item = users[1:], users[:-1], items[1:], items[:-1]
        in_order = pc.all(pc.or_(pc.greater(later, earlier), pc.and_(pc.equal(later, earlier),
                                                                      pc.greater_equal(later_item, earlier_item))))
        if not in_order.as_py():  # the splits give their holdout in this order already: the check costs 5% of a sort
            pairs = pa.table({"user": users, "item": items}).sort_by([("user", "ascending"), ("item", "ascending")])
            users, items = pairs["user"].combine_chunks(), pairs["item"].combine_chunks()
    lines = pc.binary_join_element_wise(pc.binary_join_element_wise(users, items, "\t"), pa.scalar("", pa.string()), "\n")
    if len(lines) == 0:
        return b""
    offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32, count=len(lines) + 1, offset=lines.offset * 4)
    return lines.buffers()[2][offsets[0]:offsets[-1]].to_pybytes()  # only the lines' bytes are copied


# --------------------------------------------------------------------------- building


def type_ids(ids) -> np.ndarray:
    """One array typed as `type_id_axis` types an axis: int64 when every id is a canonical decimal integer
    (lossless), else unicode strings."""
    (typed,) = type_id_axis(ids)
    return typed


def type_id_axis(*id_arrays) -> list[np.ndarray]:
    """The arrays of one id axis (e.g. the train users and the holdout users) typed together: all int64
    when every distinct id among them is a canonical decimal integer, else all unicode strings."""
    arrays = [np.asarray(ids) for ids in id_arrays]
    if arrays and all(a.dtype.kind == "i" and a.ndim == 1 for a in arrays) and any(len(a) for a in arrays):
        return [a.astype(np.int64) for a in arrays]  # signed integers print canonically and fit int64
    texts = [a.astype(str) for a in arrays]
    if not (np.concatenate(texts) if texts else np.empty(0, dtype=str)).size:
        return texts
    try:  # Arrow parses in C++ (numpy calls int() per element: 0.5 s for 200k ids); whether it takes '+7'
        # or '007' does not matter, the round trip below rejects them
        ints = [pc.cast(pa.array(text, type=pa.string()), pa.int64()).to_numpy() for text in texts]
    except (pa.ArrowInvalid, OverflowError):  # not integers, or past int64
        return texts
    # canonical when the text is what the int64 prints back: '007' parses to 7, but is another id than '7'
    if all(np.array_equal(back.astype(str), text) for back, text in zip(ints, texts)):
        return ints
    return texts


def encode_ids(values) -> tuple[np.ndarray, np.ndarray]:
    """(codes, ids): each value's row in ``ids``, the distinct values as `type_ids` types them.

    Hashing (pandas.factorize) instead of sorting millions of strings; only the distinct values are
    sorted and typed, so the order of the input does not change the result."""
    import pandas as pd

    codes, uniques = pd.factorize(np.asarray(values), sort=True)
    return codes.astype(np.int64), type_ids(np.asarray(uniques))


def _prune(train: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray):
    """Drop users and items without a training interaction: the model cannot learn them, and
    serving/evaluation treat them as unknown (popularity fallback)."""
    rows = np.flatnonzero(np.diff(train.indptr) > 0)
    cols = np.flatnonzero(np.bincount(train.indices, minlength=train.shape[1]) > 0)
    return sp.csr_matrix(train[rows][:, cols]), user_ids[rows], item_ids[cols]


def _holdout_pairs(test: sp.csr_matrix, user_ids: np.ndarray, item_ids: np.ndarray):
    test = sp.csr_matrix(test)
    rows = np.repeat(np.arange(test.shape[0]), np.diff(test.indptr))
    return user_ids[rows], item_ids[test.indices]  # CSR order: sorted by user index, then item index


def temporal_split(users, items, days, weights, window_start: dt.date, window_end: dt.date) -> TrainingData:
    """Holdout = (user, item) pairs first seen on the window's last day; train = the days before.

    Coordinates are per event (or per day) with `days` as dates. The rule is
    `als_core.splits.temporal_holdout` with the cutoff at the start of the last day: pairs already
    seen before it stay train-only, and their last-day events are left out of both sides.
    """
    from als_core.splits import temporal_holdout

    u, user_ids = encode_ids(users)
    i, item_ids = encode_ids(items)
    train, test = temporal_holdout(
        u, i, np.asarray(weights, dtype=np.float64), np.asarray(days, dtype="datetime64[D]"),
        np.datetime64(window_end, "D"), (len(user_ids), len(item_ids)),
    )
    holdout_users, holdout_items = _holdout_pairs(test, user_ids, item_ids)
    train, user_ids, item_ids = _prune(train, user_ids, item_ids)
    return TrainingData(
        user_ids, item_ids, train, holdout_users, holdout_items,
        window_start.isoformat(), window_end.isoformat(), "temporal",
    )


def random_split(users, items, weights, window_start: dt.date, window_end: dt.date, fraction: float = 0.2, seed: int = 0) -> TrainingData:
    """Per user, a random `fraction` of the user's items is held out (`als_core.splits.random_holdout`)."""
    u, user_ids = encode_ids(users)
    i, item_ids = encode_ids(items)
    return random_from_coded(CodedPairs(user_ids, item_ids, u, i, weights), window_start, window_end, fraction, seed)


# --------------------------------------------------------------------------- building from coded pairs


@dataclass
class CodedPairs:
    """Training pairs whose ids the warehouse has already coded: ``rows``/``cols`` index ``user_ids`` and
    ``item_ids`` (the distinct ids of the pairs, sorted). Coding millions of string ids is
    a hash join for DuckDB and a slow factorisation for numpy, so the asset lets DuckDB do it
    (als_store/sql/training_encode.sql) and the result is the same as `temporal_split` / `random_split` build."""

    user_ids: np.ndarray
    item_ids: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    weights: np.ndarray

    def matrix(self) -> sp.csr_matrix:
        return sp.csr_matrix(
            (np.asarray(self.weights, dtype=np.float64), (self.rows, self.cols)),
            shape=(len(self.user_ids), len(self.item_ids)),
        )


def temporal_from_coded(
    train: CodedPairs, holdout_users, holdout_items, window_start: dt.date, window_end: dt.date,
    weighting: EventWeighting = DEFAULT_WEIGHTING,
) -> TrainingData:
    """`temporal_split` with the split already done by the warehouse (als_store/sql/training_temporal_pairs.sql):
    ``train`` holds the pairs seen before the last day, the holdout the pairs first seen on it."""
    user_ids, holdout_users = type_id_axis(train.user_ids, holdout_users)
    item_ids, holdout_items = type_id_axis(train.item_ids, holdout_items)
    return TrainingData(
        user_ids, item_ids, train.matrix(), holdout_users, holdout_items,
        window_start.isoformat(), window_end.isoformat(), "temporal", weighting,
    )


def random_from_coded(
    pairs: CodedPairs, window_start: dt.date, window_end: dt.date, fraction: float = 0.2, seed: int = 0,
    weighting: EventWeighting = DEFAULT_WEIGHTING,
) -> TrainingData:
    """The random split of coded pairs: `random_split` codes them in numpy, the asset in DuckDB (same rows and
    columns, so the same split)."""
    from als_core.splits import random_holdout

    train, test = random_holdout(pairs.matrix(), fraction=fraction, seed=seed)
    user_ids, item_ids = type_ids(pairs.user_ids), type_ids(pairs.item_ids)
    holdout_users, holdout_items = _holdout_pairs(test, user_ids, item_ids)
    train, user_ids, item_ids = _prune(train, user_ids, item_ids)
    return TrainingData(
        user_ids, item_ids, train, holdout_users, holdout_items,
        window_start.isoformat(), window_end.isoformat(), f"random(fraction={fraction}, seed={seed})", weighting,
    )
