"""The Optuna hyperparameter search on a validation split of the training data (pruning, budget, resuming from a
real sqlite storage), and beyond-accuracy measures."""

from __future__ import annotations

import numpy as np
import optuna
import pytest
import scipy.sparse as sp

import als_core.tuning as tuning
from als_core.hyperparameters import DEFAULTS, SEARCH_SPACE, TUNABLE, SearchSpace
from als_core import ALS, Hyperparameters
from als_core.diversity import beyond_accuracy, item_popularity
from als_core.metrics import evaluate_ranking
from als_core.splits import random_holdout
from als_core.synthetic import generate_user_items

SEED_DEFAULTS = {key: getattr(DEFAULTS, key) for key in TUNABLE}  # factors 64, regularization 0.01, alpha 40
SPACE = SearchSpace(factors=(16, 64), regularization=(0.01, 30.0), alpha=(0.5, 40.0))


@pytest.fixture(scope="module")
def planted():
    user_items = generate_user_items(3000, 600, 60_000, seed=3)
    return random_holdout(user_items, fraction=0.2, seed=7)


@pytest.fixture(scope="module")
def small():
    return generate_user_items(600, 200, 8000, seed=4)


def holdout_ndcg(params, train, holdout) -> float:
    model = ALS(iterations=10, random_state=0, **params).fit(train)
    users = np.flatnonzero(np.diff(holdout.indptr))
    ids, _ = model.recommend(users, train[users], N=10)
    return evaluate_ranking(ids, holdout[users], n_items=train.shape[1])["ndcg@10"]


@pytest.mark.slow
def test_tuned_parameters_beat_seed_defaults_without_reading_the_holdout(planted, monkeypatch):
    train, holdout = planted
    seen_by_search = []
    real_split = tuning.random_holdout

    def recording_split(matrix, **kwargs):
        seen_by_search.append(matrix.copy())
        return real_split(matrix, **kwargs)

    monkeypatch.setattr(tuning, "random_holdout", recording_split)
    result = tuning.tune(train, SPACE, base=Hyperparameters(iterations=10), n_trials=12, seed=0)

    # the search saw exactly the training matrix, which shares no pair with the holdout
    assert len(seen_by_search) == 1
    assert (seen_by_search[0] != train).nnz == 0
    assert seen_by_search[0].multiply(holdout).nnz == 0
    assert len(result.trials) == 12 and result.validation_pairs > 0 and result.resumed == 0
    # the defaults are tried first, and every other trial lies in the space
    assert result.trials[0].params == SEED_DEFAULTS
    assert all(SPACE.contains(DEFAULTS.replace(**trial.params)) for trial in result.trials)
    assert result.best_ndcg == max(trial.ndcg for trial in result.trials if not trial.pruned)
    assert result.best_ndcg > result.trials[0].ndcg and result.best_params != SEED_DEFAULTS
    assert holdout_ndcg(result.best_params, train, holdout) > 1.1 * holdout_ndcg(SEED_DEFAULTS, train, holdout)


@pytest.mark.slow
def test_pruning_stops_trials_below_the_median_from_half_their_iterations(small):
    train = small
    hopeless = SearchSpace(factors=(1, 32), regularization=(1.0, 5000.0), alpha=(1.0, 1.0))
    result = tuning.tune(train, hopeless, base=Hyperparameters(iterations=9), n_trials=12, seed=0,
                         report_every=3, prune_after=0.5, startup_trials=3)
    pruned = [trial for trial in result.trials if trial.pruned]
    completed = [trial for trial in result.trials if not trial.pruned]
    assert pruned and completed
    # reports from iteration 5 on, every third, before the last: only iteration 6
    assert all(list(trial.ndcg_history) == [6] for trial in result.trials[3:])
    assert all(len(trial.loss_history) == 6 and trial.ndcg == trial.ndcg_history[6] for trial in pruned)
    assert all(len(trial.loss_history) == 9 for trial in completed)
    for trial in pruned:  # below the median of the trials completed before it, at the same iteration
        earlier = [t.ndcg_history[6] for t in completed if t.number < trial.number and 6 in t.ndcg_history]
        assert trial.ndcg < np.median(earlier)
    assert max(t.ndcg for t in pruned) < result.best_ndcg

    unpruned = tuning.tune(train, hopeless, base=Hyperparameters(iterations=9), n_trials=6, seed=0, prune=False)
    assert unpruned.pruned == 0 and all(len(trial.loss_history) == 9 for trial in unpruned.trials)


@pytest.mark.slow
def test_the_budget_counts_the_studys_finished_trials_and_a_rerun_resumes(small, tmp_path):
    train = small
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = dict(base=Hyperparameters(iterations=4), seed=0, storage=storage)
    ran = []

    first = tuning.tune(train, SPACE, n_trials=4, on_trial=ran.append, **search)
    assert len(first.trials) == 4 and first.resumed == 0 and len(ran) == 4

    again = tuning.tune(train, SPACE, n_trials=4, on_trial=ran.append, **search)  # budget spent: no fit
    assert len(ran) == 4 and again.resumed == 4 and again.study_name == first.study_name
    assert [t.params for t in again.trials] == [t.params for t in first.trials]
    assert again.best_params == first.best_params and again.best_ndcg == first.best_ndcg

    more = tuning.tune(train, SPACE, n_trials=7, on_trial=ran.append, **search)
    assert more.resumed == 4 and [t.number for t in more.trials] == list(range(7)) and len(ran) == 7
    assert [t.number for t in ran[4:]] == [4, 5, 6]
    stored = optuna.load_study(study_name=more.study_name, storage=storage)
    assert len(stored.trials) == 7 and stored.best_value == more.best_ndcg

    # other data or settings: another study in the same storage
    other = tuning.tune(train[:500], SPACE, n_trials=2, **search)
    assert other.study_name != first.study_name and other.resumed == 0 and len(other.trials) == 2


def test_a_given_sampler_draws_the_points_after_the_defaults(small):
    class Recording(optuna.samplers.RandomSampler):
        def __init__(self):
            super().__init__(seed=5)
            self.drawn = {}

        def sample_independent(self, study, trial, name, distribution):
            value = super().sample_independent(study, trial, name, distribution)
            self.drawn[trial.number, name] = value
            return value

    sampler = Recording()
    result = tuning.tune(small, SPACE, base=Hyperparameters(iterations=2), n_trials=4, seed=0, prune=False,
                         sampler=sampler)
    assert result.trials[0].params == SEED_DEFAULTS  # enqueued: not drawn
    assert sampler.drawn == {(trial.number, name): value for trial in result.trials[1:]
                             for name, value in trial.params.items()}
    default = tuning.tune(small, SPACE, base=Hyperparameters(iterations=2), n_trials=4, seed=0, prune=False)
    assert [t.params for t in default.trials[1:]] != [t.params for t in result.trials[1:]]


def test_a_timeout_stops_starting_trials(small):
    train = small
    result = tuning.tune(train, SPACE, base=Hyperparameters(iterations=4), n_trials=500, timeout=0.5, seed=0)
    assert 1 <= len(result.trials) < 500


def test_search_space_is_validated():
    assert SEARCH_SPACE.contains(DEFAULTS)
    assert SearchSpace(factors=[8.0, 16], regularization=[1, 2]).factors == (8, 16)
    with pytest.raises(ValueError, match="at least one value"):
        SearchSpace(factors=())
    with pytest.raises(ValueError, match="factors must be"):
        SearchSpace(factors=(8, 0))
    with pytest.raises(ValueError, match="0 < low <= high"):
        SearchSpace(regularization=(0.0, 1.0))  # a log scale needs a positive low bound
    with pytest.raises(ValueError, match="0 < low <= high"):
        SearchSpace(alpha=(10.0, 1.0))
    with pytest.raises(ValueError, match=r"\(low, high\)"):
        SearchSpace(alpha=(1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match="n_trials"):
        tuning.tune(sp.csr_matrix(np.eye(3)), n_trials=0)


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
    # a popularity passed in (a bundle's, counted once) is the one used: item 3 most popular instead of item 0
    given = beyond_accuracy(recs, train, k=2, popularity=np.array([0.25, 0.5, 0.25, 0.75]))
    assert given["popular_share@2"] == pytest.approx(1 / 7)
    assert given["coverage@2"] == result["coverage@2"]
