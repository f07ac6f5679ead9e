"""Warm-starting a fit from an earlier model of the same ids: yesterday's champion's factors for the users and
items both know, today's random initialisation for the new ones. `ALS.fit` then starts from these factors
(it keeps factors already set with matching shapes)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .als import ALS


@dataclass(frozen=True)
class WarmStart:
    """What a warm start took from the source model: ``users``/``items`` shared with it (their factors copied),
    out of ``n_users``/``n_items``; ``reason`` says why nothing was taken (a cold start) and is None otherwise."""

    users: int
    items: int
    n_users: int
    n_items: int
    reason: str | None = None

    @property
    def warm(self) -> bool:
        return self.reason is None


def cold_start_reason(model: ALS, source) -> str | None:
    """Why ``source`` (a `ModelBundle`, or None) cannot warm-start ``model``; None when it can."""
    if source is None:
        return "no champion"
    if source.model is None:
        return f"the champion is a {source.kind} model: it has no factors"
    theirs = source.model
    if theirs.implicit != model.implicit or theirs.use_biases != model.use_biases:
        return "the champion is a model of another mode (implicit, biases)"
    if theirs.factors != model.factors:
        return f"the champion has {theirs.factors} factors, this fit {model.factors}"
    return None


def warm_start(model: ALS, source, user_ids, item_ids) -> WarmStart:
    """Set ``model``'s initial factors for a fit on rows ``user_ids`` and columns ``item_ids`` (external ids):
    the initialisation of a cold start (``random_state``), then, when ``source`` can warm-start it
    (`cold_start_reason`), the source model's factors (and biases) copied into the rows of the ids it knows."""
    n_users, n_items = len(user_ids), len(item_ids)
    model.user_factors = model.item_factors = model.user_bias = model.item_bias = None
    model._init_factors(n_users, n_items)
    reason = cold_start_reason(model, source)
    if reason is not None:
        return WarmStart(0, 0, n_users, n_items, reason)
    user_rows, item_rows = source.users.lookup(user_ids), source.items.lookup(item_ids)
    counts = []
    for name, rows in (("user", user_rows), ("item", item_rows)):
        known = rows >= 0
        getattr(model, f"{name}_factors")[known] = getattr(source.model, f"{name}_factors")[rows[known]]
        if model.use_biases:
            getattr(model, f"{name}_bias")[known] = getattr(source.model, f"{name}_bias")[rows[known]]
        counts.append(int(known.sum()))
    return WarmStart(counts[0], counts[1], n_users, n_items)
