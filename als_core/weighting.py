"""How events become the r_ui a model trains on: one weight per event type, times an optional half-life decay.

One definition for the whole chain: the `interactions` asset's config defaults to it, the training snapshot and
the model bundle record it, and the API folds new users in with the bundle's own. Its fields are the parameter
names of `als_store/sql/weighted_events.sql`, the one SQL definition of the weighting. It lives here, in the
numeric core, because the bundle carries it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping


@dataclasses.dataclass(frozen=True)
class EventWeighting:
    """r_ui = sum over u's events on i of the event type's weight, times 0.5 ** (age_days / half_life_days)
    when ``half_life_days`` > 0 (0: no decay). The age is measured from the end of the last day of the window
    the events are read from, in training and in fold-in alike."""

    view_weight: float = 3.0
    cart_weight: float = 10.0
    purchase_weight: float = 40.0
    half_life_days: float = 0.0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = float(getattr(self, field.name))
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{field.name} must be a finite number >= 0, got {value!r}")
            object.__setattr__(self, field.name, value)

    def as_dict(self) -> dict[str, float]:
        """The fields by name: the bound parameters of als_store/sql/weighted_events.sql, and the JSON form."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, float] | None) -> EventWeighting:
        """The weighting written by `as_dict`; None (a record that has none) gives the defaults."""
        return cls() if values is None else cls(**values)


DEFAULT_WEIGHTING = EventWeighting()
