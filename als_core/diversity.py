"""Beyond-accuracy measures of a set of top-k lists: how much of the catalogue they use, how evenly, and how
far from the obvious best-sellers they go."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from .metrics import coverage_at_k


def item_popularity(train_user_items) -> np.ndarray:
    """Share of users who interacted with each item in training (0 for unseen items)."""
    csr = sp.csr_matrix(train_user_items)
    # the mask copies millions of indices: only when there are explicit zeros to drop
    indices = csr.indices if csr.data.all() else csr.indices[csr.data != 0]
    users_per_item = np.bincount(indices, minlength=csr.shape[1])
    return users_per_item / max(csr.shape[0], 1)


def beyond_accuracy(recommended: np.ndarray, train_user_items, k: int = 10, head_share: float = 0.01,
                    popularity: np.ndarray | None = None) -> dict:
    """Measures of the first ``k`` columns of ``recommended`` (item indices, -1 = padding):

    - ``coverage@k``: distinct recommended items / catalogue size;
    - ``entropy@k``: Shannon entropy of how often each item is recommended, divided by log(catalogue size)
      (1 = every item equally often, 0 = one item for everybody) -- "distributional coverage";
    - ``novelty@k``: mean self-information -log2(share of training users who used the item) over all
      recommendations (higher = less obvious items; an item nobody used counts as used by one user);
    - ``popular_share@k``: share of recommendations that go to the ``head_share`` (1%) most popular items.

    ``popularity``: ``item_popularity(train_user_items)`` when the caller has it already (a bundle keeps its own).
    """
    recs = np.asarray(recommended)[:, :k]
    valid = recs[recs >= 0]
    if popularity is None:
        popularity = item_popularity(train_user_items)
    n_items = len(popularity)
    n_users = max(sp.csr_matrix(train_user_items).shape[0], 1)
    if valid.size == 0:
        return {f"coverage@{k}": 0.0, f"entropy@{k}": 0.0, f"novelty@{k}": 0.0, f"popular_share@{k}": 0.0}
    counts = np.bincount(valid, minlength=n_items)
    shares = counts[counts > 0] / valid.size
    entropy = float(-(shares * np.log(shares)).sum() / np.log(n_items)) if n_items > 1 else 0.0
    novelty = float(np.mean(-np.log2(np.maximum(popularity[valid], 1.0 / n_users))))
    n_head = max(1, int(np.ceil(head_share * n_items)))
    head = np.argsort(-popularity, kind="stable")[:n_head]
    is_head = np.zeros(n_items, dtype=bool)
    is_head[head] = True
    popular_share = float(is_head[valid].mean())
    return {
        f"coverage@{k}": coverage_at_k(recs, n_items, k),
        f"entropy@{k}": entropy,
        f"novelty@{k}": novelty,
        f"popular_share@{k}": popular_share,
    }
