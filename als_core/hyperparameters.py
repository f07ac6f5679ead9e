"""The hyperparameters of ALS: one frozen, validated dataclass with the defaults, and the tuning search space.

Everything that sets a hyperparameter takes its default and its checks from here: the model (`ALS`), the tuning
search (`als_core.tuning`), the challenger's run config and the model's saved JSON (`ALS.save`, in the bundle).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SOLVERS = ("cg", "cholesky")
DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class Hyperparameters:
    """What defines a fit besides the data (``ALS`` documents each one). Values are checked and normalised on
    construction (``factors=64.0`` becomes 64, ``dtype=np.float32`` becomes ``"float32"``), so an instance is
    always valid and JSON-ready (``to_dict``)."""

    factors: int = 64
    regularization: float = 0.01
    alpha: float = 40.0
    iterations: int = 15
    solver: str = "cg"
    cg_steps: int = 3
    implicit: bool = True
    use_biases: bool = False
    weighted_regularization: bool = False
    dtype: str = "float32"
    random_state: int | None = None
    tol: float | None = None

    def __post_init__(self) -> None:
        normalised = {
            "factors": _integer("factors", self.factors, minimum=1),
            "regularization": _number("regularization", self.regularization),
            "alpha": _number("alpha", self.alpha),
            "iterations": _integer("iterations", self.iterations, minimum=0),
            "cg_steps": _integer("cg_steps", self.cg_steps, minimum=1),
            "implicit": bool(self.implicit),
            "use_biases": bool(self.use_biases),
            "weighted_regularization": bool(self.weighted_regularization),
            "dtype": _dtype_name(self.dtype),
            "random_state": None if self.random_state is None else _integer("random_state", self.random_state),
            "tol": None if self.tol is None else _number("tol", self.tol),
        }
        if self.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {SOLVERS}, got {self.solver!r}")
        if normalised["use_biases"] and normalised["implicit"]:
            raise ValueError("use_biases is for explicit ratings (implicit=False)")
        for name, value in normalised.items():
            object.__setattr__(self, name, value)  # frozen: normalised once, here

    def replace(self, **changes: Any) -> Hyperparameters:
        """A copy with ``changes`` applied and checked."""
        unknown = set(changes) - set(names())
        if unknown:
            raise ValueError(f"unknown hyperparameters {sorted(unknown)}; known: {list(names())}")
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Hyperparameters:
        """From ``to_dict``'s output (or any subset of it: the rest take the defaults)."""
        return DEFAULTS.replace(**values)


def names() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(Hyperparameters))


def _integer(name: str, value, minimum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not float(value).is_integer():
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def _number(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def _dtype_name(value) -> str:
    try:
        name = np.dtype(value).name
    except TypeError:
        name = None
    if name not in DTYPES:
        raise ValueError(f"dtype must be float32 or float64, got {value!r}")
    return name


DEFAULTS = Hyperparameters()

@dataclass(frozen=True)
class SearchSpace:
    """What the tuning search draws from: ``factors`` from a list, ``regularization`` and ``alpha`` log-uniformly
    between their (low, high) bounds. Checked on construction, like ``Hyperparameters``."""

    factors: tuple[int, ...] = (32, 64, 128)
    regularization: tuple[float, float] = (0.01, 100.0)
    alpha: tuple[float, float] = (0.1, 100.0)

    def __post_init__(self) -> None:
        factors = tuple(_integer("factors", value, minimum=1) for value in self.factors)
        if not factors or len(set(factors)) != len(factors):
            raise ValueError(f"factors needs at least one value and no repeats, got {self.factors!r}")
        object.__setattr__(self, "factors", factors)
        for name in ("regularization", "alpha"):
            bounds = tuple(getattr(self, name))
            if len(bounds) != 2:
                raise ValueError(f"{name} takes (low, high) bounds, got {bounds!r}")
            low, high = (_number(name, value) for value in bounds)
            if not 0 < low <= high:  # a log scale needs low > 0
                raise ValueError(f"{name} bounds must satisfy 0 < low <= high, got {bounds!r}")
            object.__setattr__(self, name, (low, high))

    def contains(self, hyperparameters: Hyperparameters) -> bool:
        return (hyperparameters.factors in self.factors
                and all(getattr(self, name)[0] <= getattr(hyperparameters, name) <= getattr(self, name)[1]
                        for name in ("regularization", "alpha")))

    def to_dict(self) -> dict[str, Any]:
        return {name: list(getattr(self, name)) for name in TUNABLE}


# What the tuning result may set in a challenger (the rest comes from its run config).
TUNABLE: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SearchSpace))
# The tuning asset's default space (its run config can change it); it holds the defaults, which the search
# tries first, so its pick scored at least as well as the defaults on its validation split.
SEARCH_SPACE = SearchSpace()
