"""What the retrains leave for people to look at: beyond-accuracy metrics beside NDCG and the NDCG history."""

from __future__ import annotations

from model_half import GATE_ASSETS, GOOD, WEAK, materialize, metadata_of, mlflow_resource, publish_training_data
from als_store import mlflow_store, model_registry


def test_evaluation_logs_beyond_accuracy_and_the_ndcg_history(settings):
    publish_training_data(settings)
    mlflow = mlflow_resource(settings)
    materialize(GATE_ASSETS, mlflow, settings, challenger=GOOD)
    second = materialize(GATE_ASSETS, mlflow, settings, challenger=WEAK)

    client = mlflow_store.make_client(settings.mlflow_tracking_uri)
    latest = model_registry.get_version(client, settings.model_name, 2)
    metrics = client.get_run(latest.run_id).data.metrics
    for name in ("novelty_at_10", "entropy_at_10", "popular_share_at_10", "coverage_at_10"):
        assert f"eval_challenger_{name}" in metrics and f"eval_popularity_{name}" in metrics
    # popularity puts everything on the head of the catalogue; ALS does not
    assert metrics["eval_popularity_popular_share_at_10"] > metrics["eval_challenger_popular_share_at_10"]

    evaluation = metadata_of(second, "evaluation")
    assert evaluation["ndcg_history"].count("data:image/png;base64,") == 1
    artifacts = [a.path for a in client.list_artifacts(latest.run_id, "plots")]
    assert "plots/ndcg_history.png" in artifacts and "plots/loss_curve.png" in artifacts
