"""The typed hyperparameters: checked once, defaults in one place (the model and the tuning grid follow them)."""

from __future__ import annotations

import dataclasses
import inspect
import json

import numpy as np
import pytest

from als_core import ALS, Hyperparameters
from als_core.hyperparameters import DEFAULTS, SEARCH_SPACE, TUNABLE
from als_core.synthetic import generate_user_items


@pytest.mark.parametrize("bad", [dict(factors=0), dict(factors=2.5), dict(factors="64"), dict(regularization=-1),
                                 dict(alpha=float("nan")), dict(alpha=True), dict(iterations=-1),
                                 dict(solver="sgd"), dict(cg_steps=0), dict(dtype="float16"),
                                 dict(use_biases=True), dict(tol=-0.1), dict(random_state=1.5)])
def test_invalid_values_are_refused(bad):
    with pytest.raises(ValueError):
        Hyperparameters(**bad)
    with pytest.raises(ValueError):
        DEFAULTS.replace(**bad)
    with pytest.raises(ValueError):
        ALS(**bad)


def test_values_are_normalised_and_frozen():
    params = Hyperparameters(factors=np.int64(8), regularization=1, alpha=np.float32(2.0), dtype=np.float64,
                             random_state=np.int64(3))
    assert params.to_dict() == {**DEFAULTS.to_dict(), "factors": 8, "regularization": 1.0, "alpha": 2.0,
                                "dtype": "float64", "random_state": 3}
    assert all(type(v) in (int, float, str, bool) for v in params.to_dict().values() if v is not None)
    assert Hyperparameters.from_dict(json.loads(json.dumps(params.to_dict()))) == params
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.alpha = 3.0
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        DEFAULTS.replace(rank=4)


def test_the_model_takes_its_defaults_from_the_dataclass():
    assert ALS().hyperparameters == Hyperparameters() == DEFAULTS
    signature = inspect.signature(ALS)
    for name, value in DEFAULTS.to_dict().items():
        assert signature.parameters[name].default == value, name
    model = ALS.from_hyperparameters(Hyperparameters(factors=8, alpha=2.0, solver="cholesky"), num_threads=1)
    assert (model.factors, model.alpha, model.solver, model.num_threads) == (8, 2.0, "cholesky", 1)
    assert model.dtype == np.dtype(np.float32)


def test_saved_model_records_its_hyperparameters(tmp_path):
    params = Hyperparameters(factors=4, regularization=0.5, alpha=3.0, iterations=2, random_state=7)
    model = ALS.from_hyperparameters(params).fit(generate_user_items(50, 30, 400, seed=1))
    model.save(tmp_path / "als")
    assert Hyperparameters.from_dict({k: v for k, v in json.loads((tmp_path / "als.json").read_text()).items()
                                      if k != "num_threads"}) == params
    assert ALS.load(tmp_path / "als").hyperparameters == params


def test_the_search_space_holds_the_default_point():
    assert TUNABLE == ("factors", "regularization", "alpha")
    assert SEARCH_SPACE.contains(DEFAULTS)
    assert not SEARCH_SPACE.contains(DEFAULTS.replace(factors=48))
    assert not SEARCH_SPACE.contains(DEFAULTS.replace(alpha=SEARCH_SPACE.alpha[1] * 2))
    assert SEARCH_SPACE.to_dict() == {key: list(getattr(SEARCH_SPACE, key)) for key in TUNABLE}
