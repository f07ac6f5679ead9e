"""Warm-started retrains and list stability: the factors a warm start begins from, the stability of two models'
lists against a hand-computed case, the optional stability rule of the gate, and all three through the assets
(challenger from the champion, evaluation's stability in MLflow, Dagster and `pipelines status`)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from als_core import ALS, ModelBundle
from als_core.stability import bundle_list_stability, list_stability
from als_core.warm_start import cold_start_reason, warm_start
from als_store import mlflow_store, model_registry, model_tags
from model_half import BETTER, GATE_ASSETS, GOOD, materialize, metadata_of, mlflow_resource, publish_training_data, \
    small_training_data
from pipelines import status
from pipelines.registry import gate


def test_list_stability_of_a_hand_computed_case():
    before = np.array([[1, 2, 3], [4, 5, -1], [7, 8, 9], [-1, -1, -1]])
    after = np.array([[1, 3, 6], [5, 4, -1], [10, 11, 12], [-1, -1, -1]])
    # Jaccard per user: {1,3} of {1,2,3,6} = 0.5; the same set = 1; nothing shared = 0; both empty = 1
    # first item: 1 = 1, 4 != 5, 7 != 10, none = none
    result = list_stability(before, after)
    assert result.mean_jaccard == pytest.approx((0.5 + 1 + 0 + 1) / 4)
    assert result.first_item_changed == pytest.approx(2 / 4)
    assert result.users == 4
    same = list_stability(after, after)
    assert (same.mean_jaccard, same.first_item_changed) == (1.0, 0.0)


def test_two_catalogues_are_compared_by_external_id():
    data = small_training_data()
    model = ALS(factors=4, iterations=2, random_state=0).fit(data.train)
    after = ModelBundle.build(model, data.user_ids, data.item_ids, data.train)
    # the same model over a catalogue in reverse order, plus an item only it knows (never recommended)
    order = np.arange(len(data.item_ids))[::-1]
    extra = data.item_ids.max() + 1
    reordered = ALS(factors=4, iterations=2)
    reordered.user_factors = model.user_factors
    reordered.item_factors = np.vstack([model.item_factors[order], -np.ones((1, 4), np.float32)])
    before = ModelBundle.build(reordered, data.user_ids, np.append(data.item_ids[order], extra),
                               np.hstack([data.train[:, order].toarray(), np.zeros((len(data.user_ids), 1))]))
    users = data.user_ids[:50]
    same = bundle_list_stability(before, before.recommend_many(users, 10).item_index, after,
                                 after.recommend_many(users, 10).item_index, 10)
    assert (same.mean_jaccard, same.first_item_changed, same.users) == (1.0, 0.0, 50)
    popularity = after.recommend_many(users, 10, strategy="popularity").item_index
    differs = bundle_list_stability(before, before.recommend_many(users, 10).item_index, after, popularity, 10)
    assert differs.mean_jaccard < 1


def champion_and_next_day():
    """A fitted champion bundle on one day's data, and the next day's training data: a third of the users and
    some items are new, others are gone, and the rows are in another order."""
    data = small_training_data(seed=1)
    champion = ALS(factors=8, iterations=5, regularization=1.0, alpha=10.0, random_state=3).fit(data.train)
    bundle = ModelBundle.build(champion, data.user_ids, data.item_ids, data.train)
    rng = np.random.default_rng(0)
    users = np.concatenate([rng.permutation(data.user_ids)[:260], data.user_ids.max() + 1 + np.arange(140)])
    items = np.concatenate([data.item_ids[10:][::-1], data.item_ids.max() + 1 + np.arange(20)])
    return bundle, users, items


def test_warm_start_begins_from_the_champions_factors_for_the_ids_both_know():
    bundle, users, items = champion_and_next_day()
    model = ALS(factors=8, iterations=5, random_state=7)
    started = warm_start(model, bundle, users, items)
    assert started.warm and (started.users, started.items) == (260, len(items) - 20)
    cold = ALS(factors=8, iterations=5, random_state=7)
    cold._init_factors(len(users), len(items))
    for factors, ids, index, theirs, initial in (
            (model.user_factors, users, bundle.users, bundle.model.user_factors, cold.user_factors),
            (model.item_factors, items, bundle.items, bundle.model.item_factors, cold.item_factors)):
        rows = index.lookup(ids)
        known = rows >= 0
        assert np.array_equal(factors[known], theirs[rows[known]])  # the champion's, bit for bit
        assert np.array_equal(factors[~known], initial[~known])  # the new ids as a cold start initialises them
        assert factors.dtype == np.float32 and factors.flags.c_contiguous


def test_fit_starts_from_the_warm_factors():
    """The warm factors are where the fit begins: one warm iteration lands nearer the objective's minimum than
    one cold iteration on the same data."""
    data = small_training_data(seed=2)
    champion = ALS(factors=8, iterations=15, regularization=1.0, alpha=10.0, random_state=0).fit(data.train)
    bundle = ModelBundle.build(champion, data.user_ids, data.item_ids, data.train)
    warm, cold = (ALS(factors=8, iterations=1, regularization=1.0, alpha=10.0, random_state=1) for _ in range(2))
    warm_start(warm, bundle, data.user_ids, data.item_ids)
    warm.fit(data.train)
    cold.fit(data.train)
    assert warm.loss_history[0] < cold.loss_history[0]


def test_what_cannot_warm_start_is_a_cold_start():
    bundle, users, items = champion_and_next_day()
    model = ALS(factors=8, random_state=7)
    assert cold_start_reason(model, None) == "no champion"
    assert "popularity" in cold_start_reason(model, bundle.as_popularity())
    assert "8 factors, this fit 16" in cold_start_reason(ALS(factors=16), bundle)
    cold = ALS(factors=16, random_state=7)
    started = warm_start(cold, bundle, users, items)
    assert not started.warm and (started.users, started.items) == (0, 0)
    fresh = ALS(factors=16, random_state=7)
    fresh._init_factors(len(users), len(items))
    assert np.array_equal(cold.user_factors, fresh.user_factors)


def test_the_stability_rule_refuses_a_small_gain_that_changes_many_lists():
    rule = gate.StabilityRule(min_gain=0.02, max_first_item_changed=0.5)
    refused = gate.decide(2, 0.31, 1, 0.30, 0.1, stability_rule=rule, first_item_changed=0.6)
    assert not refused.promote and not refused.promote_popularity
    assert refused.rule == gate.RULE_SMALL_GAIN_UNSTABLE and "60.0% > 50.0%" in refused.reason
    assert gate.decide(2, 0.31, 1, 0.30, 0.1, stability_rule=rule, first_item_changed=0.5).promote  # not more
    assert gate.decide(2, 0.33, 1, 0.30, 0.1, stability_rule=rule, first_item_changed=0.9).promote  # gain enough
    assert gate.decide(2, 0.31, 1, 0.30, 0.1, stability_rule=rule, first_item_changed=None).promote  # not measured
    assert gate.decide(2, 0.31, 1, 0.30, 0.1, first_item_changed=0.9).promote  # off by default
    # a first model has no lists to compare with: the rule never applies
    assert gate.decide(1, 0.31, None, None, 0.1, stability_rule=rule, first_item_changed=0.9).promote


def test_a_retrain_warm_started_from_the_champion_with_its_stability(settings, sqlite_only):
    data = publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    client = mlflow_store.make_client(resource.tracking_uri)
    first = materialize(GATE_ASSETS, resource, settings, challenger={**GOOD, "warm_start": "champion"})
    v1 = metadata_of(first, "challenger")["model_version"]
    assert metadata_of(first, "challenger")["warm_start"] == "cold: no champion"
    assert model_tags.STABILITY_JACCARD not in metadata_of(first, "evaluation")

    warm = {**GOOD, "warm_start": "champion", "warm_start_iterations": 2}
    second = materialize(GATE_ASSETS, resource, settings, challenger=warm)
    challenger = metadata_of(second, "challenger")
    ref = model_registry.get_version(client, resource.model_name, challenger["model_version"])
    run = client.get_run(ref.run_id)
    assert challenger["warm_start"] == f"champion v{v1}"
    assert run.data.params["warm_start_from"] == f"champion v{v1}"
    assert run.data.params["warm_start_users"] == str(len(data.user_ids))  # the same data: every id shared
    assert run.data.params["iterations"] == "2"
    assert len(client.get_metric_history(ref.run_id, "train_loss")) == 2
    evaluation = metadata_of(second, "evaluation")
    jaccard, changed = evaluation[model_tags.STABILITY_JACCARD], evaluation[model_tags.STABILITY_FIRST_CHANGED]
    assert 0 <= jaccard <= 1 and 0 <= changed <= 1
    assert run.data.metrics[f"eval_{model_tags.STABILITY_JACCARD}"] == pytest.approx(jaccard)
    assert model_tags.tag_float(ref.tags[model_tags.TAG_EVAL_FIRST_ITEM_CHANGED]) == pytest.approx(changed)

    report = status.render(status.read_status(dataclasses.replace(settings, mlflow_tracking_uri=resource.tracking_uri,
                                                                  model_name=resource.model_name)))
    assert (f"List stability: v{ref.version} against champion v{v1} on the same holdout users: top-10 mean Jaccard "
            f"{jaccard:.3f}, first item changed for {changed:.1%}") in report


def test_the_stability_rule_in_the_gate(settings, sqlite_only):
    publish_training_data(settings)
    resource = mlflow_resource(settings, tracking_uri=sqlite_only.tracking_uri, model_name=sqlite_only.model_name)
    materialize(GATE_ASSETS, resource, settings, challenger=GOOD)
    result = materialize(GATE_ASSETS, resource, settings, challenger=BETTER,
                         champion={"stability_min_gain": 1.0, "stability_max_first_item_changed": 0.0})
    evaluation, gated = metadata_of(result, "evaluation"), metadata_of(result, "champion")
    assert evaluation["challenger_ndcg_at_10"] > evaluation["champion_ndcg_at_10"]  # it would be promoted
    assert evaluation[model_tags.STABILITY_FIRST_CHANGED] > 0
    assert gated["decision"] == "rejected" and gated["rule"] == gate.RULE_SMALL_GAIN_UNSTABLE
