"""The registry's write side: what the pipeline writes to MLflow, one role per module.

- `run_log`: the experiment and the training runs (params, loss curve, metrics, the holdout, descriptions),
  and closing the runs a dead Dagster run left RUNNING;
- `registration`: the pyfunc's signature and pinned requirements, the smoke test, registering an ALS or a
  popularity bundle as a new version, version tags;
- `gate`: the champion gate's rule (`decide`, `GateDecision`, the `RULE_*` names), pure;
- `promotion`: the promotion lock, the gate's compare-and-set (`promote_if_better`), moving the aliases,
  rollback and a promotion by hand;
- `cli`: the `python -m pipelines registry show|rollback|promote` command.

The read side (versions, aliases, the champion's bundle) is `als_store.model_registry`, shared with the API;
reaching MLflow is `als_store.mlflow_store`; the tag keys and alias names are `als_store.model_tags`.
docs/registry.md describes the MLflow layout.
"""
