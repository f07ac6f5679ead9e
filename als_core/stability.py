"""How much two models' top-k lists differ for the same users: what a user would see change if one model
replaced the other (a challenger replacing the champion)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ListStability:
    """``mean_jaccard``: the mean over users of |A & B| / |A | B| of their two top-k item sets (1 when both
    lists are empty); ``first_item_changed``: the share of users whose first item differs (a user with one
    list empty and the other not counts as changed); ``users``: how many users were compared."""

    mean_jaccard: float
    first_item_changed: float
    users: int


def list_stability(before: np.ndarray, after: np.ndarray) -> ListStability:
    """Compare two (users x k) arrays of item codes, row for row, -1 as padding. Codes must mean the same
    item in both arrays (map two catalogues to one first: `common_item_codes`); an item appears at most
    once per row."""
    before, after = np.asarray(before), np.asarray(after)
    if before.ndim != 2 or after.ndim != 2 or before.shape[0] != after.shape[0]:
        raise ValueError(f"lists must be two 2-D arrays with one row per user, got {before.shape} and {after.shape}")
    if before.shape[0] == 0:
        return ListStability(float("nan"), float("nan"), 0)
    shared = ((before[:, :, None] == after[:, None, :]) & (before[:, :, None] >= 0)).sum(axis=(1, 2))
    union = (before >= 0).sum(axis=1) + (after >= 0).sum(axis=1) - shared
    jaccard = np.where(union > 0, shared / np.maximum(union, 1), 1.0)
    first_before = before[:, 0] if before.shape[1] else np.full(len(before), -1)
    first_after = after[:, 0] if after.shape[1] else np.full(len(after), -1)
    return ListStability(float(jaccard.mean()), float((first_before != first_after).mean()), len(before))


def bundle_list_stability(before_bundle, before_index: np.ndarray, after_bundle, after_index: np.ndarray,
                          k: int) -> ListStability:
    """`list_stability` of the first ``k`` items of two bundles' lists for the same users (``*_index``: rows of
    item indexes into each bundle's own catalogue, -1 padded, as `ModelBundle.recommend_many` gives them).
    The catalogues may differ: items are matched by external id, and an item only one bundle knows matches
    nothing in the other's lists."""
    before_index = np.asarray(before_index, dtype=np.int64)[:, :k]
    after_index = np.asarray(after_index, dtype=np.int64)[:, :k]
    # the before-catalogue's items as after-catalogue indexes; the ones it lacks get codes past its end
    translate = after_bundle.items.lookup(before_bundle.item_ids)
    missing = translate < 0
    translate[missing] = len(after_bundle.items) + np.flatnonzero(missing)
    before_codes = np.where(before_index >= 0, translate[np.maximum(before_index, 0)], -1)
    return list_stability(before_codes, after_index)
