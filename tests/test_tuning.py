"""Hyperparameter search on a validation split of the training data, and beyond-accuracy measures."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import als_core.tuning as tuning
from als_core.hyperparameters import DEFAULTS, TUNABLE
from als_core import ALS, Hyperparameters
from als_core.diversity import beyond_accuracy, item_popularity
from als_core.metrics import evaluate_ranking
from als_core.splits import random_holdout
from als_core.synthetic import generate_user_items

SEED_DEFAULTS = {key: getattr(DEFAULTS, key) for key in TUNABLE}  # factors 64, regularization 0.01, alpha 40


@pytest.fixture(scope="module")
def planted():
    user_items = generate_user_items(3000, 600, 60_000, seed=3)
    return random_holdout(user_items, fraction=0.2, seed=7)


def holdout_ndcg(params, train, holdout) -> float:
    model = ALS(iterations=10, random_state=0, **params).fit(train)
    users = np.flatnonzero(np.diff(holdout.indptr))
    ids, _ = model.recommend(users, train[users], N=10)
    return evaluate_ranking(ids, holdout[users], n_items=train.shape[1])["ndcg@10"]


def test_tuned_parameters_beat_seed_defaults_without_reading_the_holdout(planted, monkeypatch):
    train, holdout = planted
    seen_by_search = []
    real_split = tuning.random_holdout

    def recording_split(matrix, **kwargs):
        seen_by_search.append(matrix.copy())
        return real_split(matrix, **kwargs)

    monkeypatch.setattr(tuning, "random_holdout", recording_split)
    space = {"factors": [16, 64], "regularization": [0.01, 10.0], "alpha": [1.0, 40.0]}
    result = tuning.tune(train, space, base=Hyperparameters(iterations=10), seed=0)

    # the search saw exactly the training matrix, which shares no pair with the holdout
    assert len(seen_by_search) == 1
    assert (seen_by_search[0] != train).nnz == 0
    assert seen_by_search[0].multiply(holdout).nnz == 0
    assert len(result.points) == 8 and result.validation_pairs > 0
    assert result.best_params != SEED_DEFAULTS
    assert holdout_ndcg(result.best_params, train, holdout) > 1.1 * holdout_ndcg(SEED_DEFAULTS, train, holdout)


def test_hopeless_points_stop_early(planted):
    train, _ = planted
    space = {"factors": [32, 1], "regularization": [10.0, 5000.0], "alpha": [1.0]}
    result = tuning.tune(train, space, base=Hyperparameters(iterations=9), seed=0)
    by_params = {(p.params["factors"], p.params["regularization"]): p for p in result.points}
    assert not by_params[(32, 10.0)].stopped_early
    assert len(by_params[(32, 10.0)].loss_history) == 9
    hopeless = by_params[(1, 5000.0)]
    assert hopeless.stopped_early and len(hopeless.loss_history) == 3
    assert result.best_params == {"factors": 32, "regularization": 10.0, "alpha": 1.0}
    assert result.best == Hyperparameters(factors=32, regularization=10.0, alpha=1.0, iterations=9, random_state=0)
    rows, cols, grid = result.table("factors", "regularization")
    assert rows == [1, 32] and cols == [10.0, 5000.0] and grid.shape == (2, 2)
    assert grid[1, 0] == pytest.approx(result.best_ndcg)


def test_search_space_is_validated():
    with pytest.raises(ValueError, match="unknown hyperparameters"):
        tuning.grid_points({"rank": [1]})
    with pytest.raises(ValueError, match="at least one value"):
        tuning.grid_points({"factors": []})
    with pytest.raises(ValueError, match="alpha must be"):  # found before any point is fitted
        tuning.grid_points({"factors": [8], "alpha": [1.0, -1.0]})


def test_beyond_accuracy_hand_computed():
    # 4 users, 4 items; item 0 used by 3 users, item 1 by 2, items 2 and 3 by 1 and 0
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    np.testing.assert_allclose(item_popularity(train), [0.75, 0.5, 0.25, 0.0])
    stored_zero = train.copy()
    stored_zero.data[-1] = 0  # user 2's item 1, kept as an explicit zero: not a use
    np.testing.assert_allclose(item_popularity(stored_zero), [0.75, 0.25, 0.25, 0.0])
    recs = np.array([[0, 1], [0, 2], [0, -1], [3, 0]])
    result = beyond_accuracy(recs, train, k=2)
    assert result["coverage@2"] == pytest.approx(4 / 4)
    counts = np.array([4, 1, 1, 1]) / 7
    assert result["entropy@2"] == pytest.approx(-(counts * np.log(counts)).sum() / np.log(4))
    info = -np.log2([0.75] * 4 + [0.5, 0.25, 0.25])  # the never-used item counts as one user of four
    assert result["novelty@2"] == pytest.approx(info.mean())
    assert result["popular_share@2"] == pytest.approx(4 / 7)  # top 1% of 4 items = item 0
