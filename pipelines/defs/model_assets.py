"""The model half of the retrain: challenger -> evaluation -> champion -> recommendations (group "training").

Nothing passes between these assets through an IO manager: each writes to MLflow (or DuckDB) and returns a
`dg.MaterializeResult`; the next one declares `deps=` and finds its input again in MLflow:
- the challenger of this Dagster run is the model version tagged ``dagster_run_id=<run id>``; an asset
  materialised on its own (another run id) takes the newest version of the model;
- the evaluation's scores are tags ``eval.*`` of that version, which the champion gate reads;
- the holdout a challenger is judged on is an artifact of its MLflow run (``holdout/holdout.npz``);
- the popularity model the evaluation measured next to the challenger is registered by the gate only when it
  is the one promoted (a version of kind ``popularity``, counted on the challenger's training data).
docs/registry.md describes the MLflow layout.
"""


import contextlib
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import dagster as dg
import numpy as np
from duckdb import IOException as DuckDBIOError
from pydantic import Field

from als_core.hyperparameters import DEFAULTS, SOLVERS, TUNABLE, Hyperparameters
from als_core.stability import bundle_list_stability
from als_store import model_tags, sql_files
from als_store.mlflow_store import BundleUnloadable, MlflowUnavailable, mlflow_errors, quoted
from als_store.settings import Settings
from pipelines import plots, recommendations_table, scored_lists
from pipelines.defs.mlflow_resource import MLflowResource
from pipelines.defs.resources import DuckDBResource, PipelineSettings
from pipelines.defs.spark_resource import SparkEngine
from pipelines.defs.tuning import TUNING_KEY, latest_tuning_result
from pipelines.markdown import markdown_table
from pipelines.registry import run_log
from pipelines.registry.gate import GateDecision, StabilityRule
from pipelines.registry.registration import set_version_tags
from pipelines.training_data import TrainingData, latest_dir

HISTORY_VERSIONS = 10  # retrains shown in the NDCG history picture

GROUP = "training"
DECIDING = model_tags.GATE_METRIC  # what the gate compares
K = int(DECIDING.split("@")[1])  # every metric is measured at the same cut-off
ROLES = ("challenger", "champion", "popularity")
ENGINES = ("numba", "spark")  # where the challenger trains and `recommendations` scores
WARM_STARTS = ("none", "champion")  # where the challenger's fit starts (ChallengerConfig.warm_start)
SPARK_NO_LOSS = ("not reported: Spark's ALS computes no loss while it fits; final_objective is the als_core "
                 "objective of the final factors")


@contextlib.contextmanager
def mlflow_failure_is_a_run_failure() -> Iterator[None]:
    """An MLflow outage fails the step with a message that says so (and nothing moved the champion alias)."""
    try:
        yield
    except MlflowUnavailable as exc:
        raise dg.Failure(description=f"{exc}. The champion alias was not changed.") from exc


def target_version(client, mlflow: MLflowResource, context: dg.AssetExecutionContext, version: int | None):
    """The ALS challenger this step works on: the one given in its config, else this run's challenger (the
    newest ALS version when the asset runs on its own)."""
    if version is None:
        return mlflow.challenger_of(client, context.run.run_id)
    ref = mlflow.version(client, version)
    if ref.kind != model_tags.KIND_ALS:
        raise dg.Failure(description=(
            f"{ref.name} v{ref.version} is a {ref.kind} model, registered by the gate for ALS challenger "
            f"v{ref.tags.get(model_tags.TAG_POPULARITY_OF, '?')}: evaluation and the gate judge ALS challengers "
            f"(give that version instead)"))
    return ref


def dagster_run_alive(instance, run_id: str) -> bool | None:
    """Whether a Dagster run is still going; None when this instance does not know it."""
    run = instance.get_run_by_id(run_id)
    return None if run is None else not run.is_finished


def table_model(ref, n: int) -> recommendations_table.TableModel:
    """What `recommendations` records about a model version writing ``n`` lists per user."""
    return recommendations_table.TableModel(ref.name, int(ref.version), ref.run_id, int(n))


def _score(bundle, holdout: tuple[np.ndarray, np.ndarray], strategy: str = "model", lists=None) -> dict[str, float]:
    from als_core.bundle import evaluate_on_holdout

    return evaluate_on_holdout(bundle, holdout[0], holdout[1], k=K, strategy=strategy, lists=lists)


# ------------------------------------------------------------------------------------------ challenger


class ChallengerConfig(dg.Config):
    # The tunable fields default to None, not to a number: Dagster cannot tell a typed value that equals a
    # field's default from no value at all, so an explicit `alpha: 40.0` would lose to tuning. Empty means
    # "tuned value, else the default"; any number typed in the launchpad is used as typed. Defaults and checks
    # are als_core.hyperparameters'.
    factors: int | None = Field(default=None, description=(
        f"Latent factors. Empty: the tuning result when there is one, else {DEFAULTS.factors}. "
        f"A value set here always wins."))
    iterations: int = Field(default=DEFAULTS.iterations, ge=1, description=(
        "ALS iterations (sweeps over users and items)."))
    alpha: float | None = Field(default=None, description=(
        f"Confidence scale: c_ui = 1 + alpha * r_ui. Empty: the tuning result when there is one, else "
        f"{DEFAULTS.alpha:g}. A value set here always wins."))
    regularization: float | None = Field(default=None, description=(
        f"L2 regularization of the factors. Empty: the tuning result when there is one, else "
        f"{DEFAULTS.regularization:g}. A value set here always wins."))
    solver: Literal[SOLVERS] = Field(default=DEFAULTS.solver, description=(
        "cg: a few conjugate-gradient steps per row; cholesky: exact row solves."))
    cg_steps: int = Field(default=DEFAULTS.cg_steps, description="Conjugate-gradient steps per row (solver=cg).")
    weighted_regularization: bool = Field(default=DEFAULTS.weighted_regularization, description=(
        "Scale the regularization by each user's and item's count of interactions (ALS-WR), as Spark's ALS "
        "always does: a numba run with it and solver=cholesky fits the objective an engine=spark run fits."))
    seed: int = Field(default=0, description="Seed of the factor initialisation (reproducible retrains).")
    use_tuned: bool = Field(
        default=True,
        description="Fill factors/regularization/alpha left empty from the latest materialisation of the `tuning` "
                    "asset (its best_params) when there is one (false: empty fields take the defaults).",
    )
    engine: Literal[ENGINES] = Field(default="numba", description=(
        "numba: train here with als_core. spark: train with Spark MLlib's ALS on the cluster of the `spark` "
        "resource (ALS_SPARK_MASTER; local[*] when unset; needs Java 17 and the `spark` extra). Spark's implicit "
        "ALS always scales the regularization by each user's and item's count of interactions (ALS-WR) and "
        "solves every row exactly, so a spark run records weighted_regularization=true and solver=cholesky "
        "(solver and cg_steps are not used), and the same regularization number is a stronger penalty than on "
        "numba's default (tuning searches unweighted). Both engines log final_objective, the als_core "
        "objective of the final factors, to compare runs across engines (docs/scale.md)."))
    # the defaults are what bench/warm_start.py measured (docs/benchmarks.md, "Warm-started retrains")
    warm_start: Literal[WARM_STARTS] = Field(default="champion", description=(
        "champion: factors start from the champion's for the users and items both know (the others from the "
        "seeded initialisation), and the fit runs warm_start_iterations. none: the seeded initialisation for "
        "all, `iterations`. A champion of another kind (popularity), another factor count, one that does not "
        "load, no champion, or engine spark: a cold start, said in the log and the MLflow params. The gate "
        "still decides (docs/registry.md)."))
    warm_start_iterations: int | None = Field(default=1, ge=1, description=(
        "Iterations of a fit that did warm-start; empty: `iterations`. A cold start always runs `iterations`."))


def resolve_hyperparameters(config: ChallengerConfig, tuned: Mapping[str, Any] | None
                            ) -> tuple[Hyperparameters, dict[str, str]]:
    """The challenger's hyperparameters, and where each tunable one came from: "config", "tuning" (``tuned``,
    the tuning asset's best point, when ``config.use_tuned``) or "default". Raises ValueError for a bad value."""
    tuned = (tuned or {}) if config.use_tuned else {}
    values, sources = {}, {}
    for key in TUNABLE:
        explicit = getattr(config, key)
        if explicit is not None:
            values[key], sources[key] = explicit, "config"
        elif key in tuned:
            values[key], sources[key] = tuned[key], "tuning"
        else:
            sources[key] = "default"
    hyperparameters = DEFAULTS.replace(iterations=config.iterations, solver=config.solver, cg_steps=config.cg_steps,
                                       weighted_regularization=config.weighted_regularization,
                                       random_state=config.seed, **values)
    if config.engine == "spark":
        from als_spark.params import als_core_equivalent

        hyperparameters = als_core_equivalent(hyperparameters)  # what Spark fits, said in als_core's terms
    return hyperparameters, sources


def sources_summary(sources: dict[str, str]) -> str:
    """One word when every tunable parameter came from the same place, else `factors=tuning, alpha=config, ...`."""
    distinct = set(sources.values())
    if len(distinct) == 1:
        return distinct.pop()
    return ", ".join(f"{key}={source}" for key, source in sources.items())


@dataclass(frozen=True)
class EngineFacts:
    """What a run records about the engine beyond `engine` itself (MLflow params, metrics and tags)."""

    params: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def fit_on_spark(context: dg.AssetExecutionContext, spark: SparkEngine, data: TrainingData,
                 hyperparameters: Hyperparameters):
    """Spark's ALS on the training matrix, its factors in an als_core model of ``hyperparameters`` (Spark's
    objective in als_core's terms: `als_spark.params.als_core_equivalent`), which the bundle serves as any
    other; and the facts of the Spark run."""
    from als_core import ALS

    fitted = spark.fit(context, data.train, hyperparameters)
    model = ALS.from_hyperparameters(hyperparameters)
    model.user_factors, model.item_factors = fitted.user_factors, fitted.item_factors
    report = fitted.report
    facts = EngineFacts(
        params={model_tags.PARAM_SPARK_VERSION: str(report.get("spark_version", "")),
                model_tags.PARAM_SPARK_MASTER: str(report.get("master", "")),
                model_tags.PARAM_SPARK_EXECUTORS: str(report.get("executors", "")),
                model_tags.PARAM_SPARK_EXECUTOR_CORES: str(report.get("executor_cores", ""))},
        metrics={model_tags.METRIC_SECONDS_MOVING_DATA: float(fitted.seconds_moving),
                 model_tags.METRIC_SECONDS_FITTING: float(fitted.seconds_fitting)},
        tags={model_tags.TAG_TRAIN_LOSS: SPARK_NO_LOSS})
    context.log.info(f"Spark {facts.params[model_tags.PARAM_SPARK_VERSION]} on {report.get('master')}: fitted in "
                     f"{fitted.seconds_fitting:.1f}s, {fitted.seconds_moving:.1f}s moving data")
    return model, facts


def start_from_champion(context: dg.AssetExecutionContext, config: ChallengerConfig, mlflow: MLflowResource, client,
                        model, data: TrainingData) -> tuple[EngineFacts, bool]:
    """Set ``model``'s starting factors as ``config.warm_start`` asks (`als_core.warm_start`): the champion's
    for the ids both know, or a cold start, said in the log. Returns the run's facts of it (params warm_start,
    warm_start_from, warm_start_users, warm_start_items; metric warm_start_seconds, loading the champion
    included) and whether the fit warm-starts."""
    from als_core.warm_start import WarmStart, warm_start

    started = time.perf_counter()
    champion_ref, source, reason = None, None, None
    if config.warm_start == "none":
        reason = "warm_start: none"
    else:
        champion_ref = mlflow.champion(client)
        if champion_ref is None:
            pass  # warm_start says "no champion", whatever the engine
        elif config.engine == "spark":
            reason = "engine spark: Spark's ALS starts from its own initialisation"
        else:
            try:
                source = mlflow.load_version_bundle(champion_ref.version)
            except BundleUnloadable as exc:
                reason = f"champion v{champion_ref.version} does not load ({exc.cause})"
    if reason is None:
        started_from = warm_start(model, source, data.user_ids, data.item_ids)
    else:
        started_from = WarmStart(0, 0, len(data.user_ids), len(data.item_ids), reason)
    seconds = time.perf_counter() - started
    if started_from.warm:
        origin = f"champion v{champion_ref.version}"
        context.log.info(f"warm start from {origin}: {started_from.users}/{started_from.n_users} users and "
                         f"{started_from.items}/{started_from.n_items} items start from its factors, the others "
                         f"from the seeded initialisation ({seconds:.2f}s)")
    else:
        origin = f"cold: {started_from.reason}"
        if config.warm_start != "none":
            context.log.info(f"warm_start: {config.warm_start} asked, cold start: {started_from.reason}")
    facts = EngineFacts(params={"warm_start": config.warm_start, "warm_start_from": origin,
                                "warm_start_users": str(started_from.users),
                                "warm_start_items": str(started_from.items)},
                        metrics={"warm_start_seconds": seconds} if started_from.warm else {})
    return facts, started_from.warm


def factors_finite_result(model) -> dg.AssetCheckResult:
    bad = {name: int((~np.isfinite(getattr(model, name))).sum()) for name in ("user_factors", "item_factors")}
    return dg.AssetCheckResult(
        check_name="factors_finite",
        passed=not any(bad.values()),
        metadata={f"non_finite_{name}": dg.MetadataValue.int(count) for name, count in bad.items()},
        description="every user and item factor is finite (NaN/inf means the fit diverged)",
    )


@dg.asset(
    group_name=GROUP,
    deps=["training_data", TUNING_KEY],
    kinds={"python", "mlflow"},
    check_specs=[dg.AssetCheckSpec("factors_finite", asset="challenger", blocking=True,
                                   description="All factors finite; blocks evaluation and promotion if not.")],
    description="ALS fit on the latest training data, here (numba) or on Spark (run config `engine`); one MLflow "
                "run, registered as a new model version.",
)
def challenger(context: dg.AssetExecutionContext, config: ChallengerConfig, mlflow: MLflowResource,
               pipeline: PipelineSettings, spark: SparkEngine) -> dg.MaterializeResult:
    from als_core import ALS
    from als_core.bundle import ModelBundle

    settings = pipeline.settings
    snapshot = latest_dir(settings).resolve()  # the stable snapshot behind `latest`, recorded for tracing
    data = TrainingData.load(snapshot)
    tuned = latest_tuning_result(context.instance) if config.use_tuned else None
    try:
        hyperparameters, sources = resolve_hyperparameters(config, tuned.values if tuned else None)
    except ValueError as exc:
        raise dg.Failure(description=f"challenger config: {exc}") from exc
    source = sources_summary(sources)
    if not config.use_tuned:
        tuning_note = "not used (use_tuned: false)"
    elif tuned is None:
        tuning_note = "none yet: materialise `tuning`"
        defaulted = [key for key, where in sources.items() if where == "default"]
        if defaulted:
            context.log.info(f"no tuning result yet: {', '.join(defaulted)} take the defaults (materialise "
                             f"`tuning` to search for better ones)")
    else:
        tuning_note = f"{tuned.values} from Dagster run {tuned.run_id}"
    run_id = context.run.run_id
    with mlflow_failure_is_a_run_failure():
        client = mlflow.client()  # checks reachability before minutes of training
        experiment_id = mlflow.experiment_id(client)
        closed = run_log.close_abandoned_runs(client, experiment_id,
                                              lambda other: dagster_run_alive(context.instance, other), run_id)
        if closed:
            context.log.warning(f"marked KILLED {len(closed)} MLflow run(s) left RUNNING by Dagster runs that are "
                                f"over: {', '.join(closed)}")
        identity = {model_tags.TAG_DAGSTER_RUN_ID: run_id, model_tags.TAG_MODEL_KIND: model_tags.KIND_ALS,
                    model_tags.TAG_HOLDOUT_FINGERPRINT: data.holdout_fingerprint,
                    "training_window": f"{data.window_start}..{data.window_end}", "training_split": data.split,
                    "training_snapshot": str(snapshot), "hyperparameters_from": source}
        mlflow_run = run_log.start_training_run(client, experiment_id, f"challenger {data.window_end}", identity)
        try:
            context.log.info(f"training on {config.engine}: {hyperparameters} ({source}) on {data.train.shape[0]} users "
                             f"x {data.train.shape[1]} items, {data.train.nnz} nonzeros; MLflow run {mlflow_run}")

            def progress(iteration: int, loss: float, seconds: float) -> None:
                context.log.info(f"iteration {iteration + 1}/{hyperparameters.iterations}: loss {loss:.6f} ({seconds:.2f}s)")

            model = ALS.from_hyperparameters(hyperparameters, callback=progress)
            start_facts, warm = start_from_champion(context, config, mlflow, client, model, data)
            if warm and config.warm_start_iterations is not None:
                hyperparameters = hyperparameters.replace(iterations=config.warm_start_iterations)
                model.iterations = hyperparameters.iterations
                context.log.info(f"warm start: {hyperparameters.iterations} iterations (warm_start_iterations)")
            started = time.perf_counter()
            if config.engine == "spark":
                model, engine_facts = fit_on_spark(context, spark, data, hyperparameters)
            else:
                model.fit(data.train)
                engine_facts = EngineFacts()
            fit_seconds = time.perf_counter() - started
            engine_facts = EngineFacts({**engine_facts.params, **start_facts.params},
                                       {**engine_facts.metrics, **start_facts.metrics}, engine_facts.tags)
            # the same number whichever engine fitted the factors: a fit here ends on the objective of its final
            # factors (the last loss; tests/test_als.py checks they agree), other factors get it computed (a
            # pass over every pair: about 1.5 s of a daily retrain at 6.5M pairs)
            final_objective = (model.loss_history[-1] if config.engine == "numba" and model.loss_history
                               else model.objective(data.train))
            sizes = {"users": data.train.shape[0], "items": data.train.shape[1], "nnz": int(data.train.nnz),
                     "holdout_pairs": data.holdout_pairs}
            run_log.log_training(client, mlflow_run, {**hyperparameters.to_dict(), "hyperparameters_from": source,
                                                      model_tags.PARAM_ENGINE: config.engine, **engine_facts.params},
                                 model.loss_history, fit_seconds, sizes,
                                 metrics={model_tags.METRIC_FINAL_OBJECTIVE: final_objective, **engine_facts.metrics},
                                 tags=engine_facts.tags)
            run_log.log_holdout(client, mlflow_run, data.holdout_user_ids, data.holdout_item_ids)
            check = factors_finite_result(model)
            metadata = {
                "mlflow_run": dg.MetadataValue.url(mlflow.run_url(experiment_id, mlflow_run)),
                "mlflow_run_id": dg.MetadataValue.text(mlflow_run),
                "engine": dg.MetadataValue.text(config.engine),
                "warm_start": dg.MetadataValue.text(start_facts.params["warm_start_from"]),
                "fit_seconds": dg.MetadataValue.float(fit_seconds),
                "final_loss": dg.MetadataValue.float(float(model.loss_history[-1]) if model.loss_history else math.nan),
                "final_objective": dg.MetadataValue.float(final_objective),
                **{key: dg.MetadataValue.float(value) for key, value in engine_facts.metrics.items()},
                "hyperparameters": dg.MetadataValue.json({**hyperparameters.to_dict(), "from": sources}),
                "tuning_result": dg.MetadataValue.text(tuning_note),
                **{key: dg.MetadataValue.int(value) for key, value in sizes.items()},
            }
            with tempfile.TemporaryDirectory(prefix="challenger-") as tmp:
                if model.loss_history:
                    curve = plots.loss_curve(model.loss_history, Path(tmp) / "loss_curve.png")
                    with mlflow_errors("logging the loss curve"):
                        client.log_artifact(mlflow_run, str(curve), artifact_path="plots")
                    metadata["loss_curve"] = dg.MetadataValue.md(plots.markdown_image(curve, "training loss"))
                if not check.passed:
                    # keep the run for diagnosis, but register nothing: a broken model must never be served
                    run_log.finish_run(client, mlflow_run, failed=True)
                    context.log.error("non-finite factors: nothing registered")
                    return dg.MaterializeResult(metadata=metadata, check_results=[check])
                bundle = ModelBundle.build(model, data.user_ids, data.item_ids, data.train, metadata={
                    "hyperparameters": hyperparameters.to_dict(), "training_window": [data.window_start, data.window_end],
                    "holdout_fingerprint": data.holdout_fingerprint, "mlflow_run_id": mlflow_run,
                    "dagster_run_id": run_id}, weighting=data.weighting)
                bundle_dir = bundle.save(Path(tmp) / "bundle")
                version = mlflow.register_bundle(mlflow_run, bundle_dir, bundle.user_ids[:2], identity)
            run_log.finish_run(client, mlflow_run)
        except BaseException:
            with contextlib.suppress(Exception):
                run_log.finish_run(client, mlflow_run, failed=True)
            raise
    context.log.info(f"registered {version.name} version {version.version}")
    metadata["model_version"] = dg.MetadataValue.int(version.version)
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


# ------------------------------------------------------------------------------------------ evaluation


def _metrics_table(scores: dict[str, dict[str, float] | None]) -> str:
    keys = [key for key in next(s for s in scores.values() if s) if "@" in key]
    rows = [[role] + [f"{values[key]:.4f}" if values else "-" for key in keys] for role, values in scores.items()]
    return markdown_table(["model", *keys], rows)


class EvaluationConfig(dg.Config):
    version: int | None = Field(default=None, description="Model version to evaluate; empty = this run's challenger "
                                                         "(the newest version when evaluation runs on its own).")
    keep_n: int = Field(default=50, ge=0, le=1000,
                        description="Score the holdout users' lists this deep and keep them for `recommendations` "
                                    "(set it to its n): the day the challenger is promoted, those users are not "
                                    "scored again. Top 50 takes the same matrix products as top 10 and a deeper "
                                    "selection (about 1.5 s more per 100k users). 0 keeps none.")


def keep_challenger_lists(settings: Settings, run_id: str, bundle, users: np.ndarray, lists) -> int:
    """Keep the lists of the holdout users the bundle knows (`pipelines.scored_lists`); returns how many."""
    rows = bundle.users.lookup(users)
    known = rows >= 0
    scored_lists.save(settings, run_id, recommendations_table.PrescoredLists(
        rows[known], lists.item_index[known], lists.scores[known]))
    return int(known.sum())


def stored_champion_lists(duckdb: DuckDBResource, champion_ref, bundle, users: np.ndarray, log):
    """The champion's top-K lists for ``users`` read back from `recommendations` when the table holds that
    champion's lists, else None (then the caller scores them)."""
    try:
        with duckdb.connect(read_only=True) as con:
            return recommendations_table.top_k_lists(con, table_model(champion_ref, K), bundle, users, K)
    except FileNotFoundError:  # no warehouse yet
        return None
    except DuckDBIOError as exc:  # held by a process outside the pool: scoring is slower, not wrong
        log(f"could not read `recommendations` ({exc}): scoring the champion instead")
        return None


def stability_figures(stability) -> dict[str, float]:
    """The evaluation's list stability (`als_core.stability.ListStability`) by name; empty without one."""
    if stability is None:
        return {}
    return {model_tags.STABILITY_JACCARD: stability.mean_jaccard,
            model_tags.STABILITY_FIRST_CHANGED: stability.first_item_changed}


@dg.asset(
    group_name=GROUP,
    deps=[challenger],
    pool="duckdb",  # reads the champion's lists from `recommendations`
    kinds={"python", "mlflow"},
    check_specs=[dg.AssetCheckSpec("challenger_beats_popularity", asset="evaluation",
                                   description="The challenger's NDCG@10 is above the popularity baseline's (a warning: "
                                               "the gate decides).")],
    description="Challenger, current champion and popularity scored on the challenger's holdout (unknown users "
                "get the popularity fallback, as in serving).",
)
def evaluation(context: dg.AssetExecutionContext, config: EvaluationConfig, mlflow: MLflowResource,
               duckdb: DuckDBResource, pipeline: PipelineSettings) -> dg.MaterializeResult:
    from als_core.bundle import holdout_users

    with mlflow_failure_is_a_run_failure():
        client = mlflow.client()
        ref = target_version(client, mlflow, context, config.version)
        holdout = run_log.load_holdout(client, ref.run_id)
        users = holdout_users(holdout[0])
        context.log.info(f"evaluating {ref.name} v{ref.version} on {len(holdout[0])} holdout pairs of {len(users)} "
                         f"users")
        bundle = mlflow.load_bundle(ref.version)
        lists = bundle.recommend_many(users, n=max(K, config.keep_n))
        scores: dict[str, dict[str, float] | None] = {
            "challenger": _score(bundle, holdout, lists=lists), "champion": None,
            "popularity": _score(bundle, holdout, strategy="popularity")}
        if config.keep_n:
            kept = keep_challenger_lists(pipeline.settings, ref.run_id, bundle, users, lists)
            context.log.info(f"kept {kept} users' top {config.keep_n} for `recommendations`")
        champion = mlflow.champion(client)
        champion_from, champion_error, stability = "none", None, None
        if champion is not None:
            try:
                if champion.version == ref.version:
                    champion_bundle, champion_lists, champion_from = bundle, lists, "the challenger's lists"
                else:
                    champion_bundle = mlflow.load_version_bundle(champion.version)
                    champion_lists = stored_champion_lists(duckdb, champion, champion_bundle, users,
                                                           context.log.warning)
                    champion_from = "scored" if champion_lists is None else "table recommendations"
                context.log.info(f"champion v{champion.version} on the same holdout: lists {champion_from}")
                try:
                    if champion_lists is None:
                        champion_lists = champion_bundle.recommend_many(users, n=K)
                    scores["champion"] = _score(champion_bundle, holdout, lists=champion_lists)
                    stability = bundle_list_stability(champion_bundle, champion_lists.item_index, bundle,
                                                      lists.item_index, K)
                except Exception as exc:  # loaded but not scorable on this holdout: judged as if unloadable
                    champion_error = f"scoring failed: {type(exc).__name__}: {exc}"
            except BundleUnloadable as exc:
                champion_error = exc.cause
            if champion_error is not None:
                champion_from = "not scored"
                context.log.error(f"champion v{champion.version} could not be scored ({champion_error}): the gate "
                                  f"promotes the challenger if it beats popularity, else popularity")
        if champion_error is not None:
            stability = None
        run_log.log_metrics(client, ref.run_id, {
            **{f"eval_{role}_{model_tags.metric_name(key)}": value
               for role, values in scores.items() if values for key, value in values.items()},
            **{f"eval_{key}": value for key, value in stability_figures(stability).items()}})
        set_version_tags(client, ref, {
            model_tags.TAG_EVAL_CHALLENGER_NDCG: repr(scores["challenger"][DECIDING]),
            model_tags.TAG_EVAL_POPULARITY_NDCG: repr(scores["popularity"][DECIDING]),
            model_tags.TAG_EVAL_CHAMPION_VERSION: "" if champion is None else champion.version,
            model_tags.TAG_EVAL_CHAMPION_NDCG: "" if scores["champion"] is None else repr(scores["champion"][DECIDING]),
            model_tags.TAG_EVAL_CHAMPION_LOAD_ERROR: champion_error or "",
            model_tags.TAG_EVAL_DAGSTER_RUN_ID: context.run.run_id,
            model_tags.TAG_EVAL_LIST_JACCARD: repr(stability.mean_jaccard) if stability else "",
            model_tags.TAG_EVAL_FIRST_ITEM_CHANGED: repr(stability.first_item_changed) if stability else "",
        })
        experiment_id = client.get_run(ref.run_id).info.experiment_id
        with tempfile.TemporaryDirectory(prefix="evaluation-") as tmp:
            history = ndcg_history_picture(client, ref.name, Path(tmp) / "ndcg_history.png")
            if history is not None:
                client.log_artifact(ref.run_id, str(history), artifact_path="plots")
                history_md = plots.markdown_image(history, "NDCG@10 over the last retrains")
    for role, values in scores.items():
        if values:
            context.log.info(f"{role}: NDCG@10 {values[DECIDING]:.4f}, HitRate@10 {values['hit_rate@10']:.4f}")
    if stability is not None:
        context.log.info(f"list stability against champion v{champion.version} ({stability.users} holdout users): "
                         f"mean Jaccard of the top-{K} {stability.mean_jaccard:.3f}, first item changed for "
                         f"{stability.first_item_changed:.1%}")
    beats = scores["challenger"][DECIDING] > scores["popularity"][DECIDING]
    metadata = {
        f"{role}_ndcg_at_10": dg.MetadataValue.float(float(values[DECIDING]))
        for role, values in scores.items() if values
    }
    metadata.update({
        "challenger_version": dg.MetadataValue.int(ref.version),
        "champion_version": dg.MetadataValue.int(champion.version) if champion else dg.MetadataValue.text("none"),
        "champion_lists": dg.MetadataValue.text(champion_from),
        **({"champion_load_error": dg.MetadataValue.text(f"v{champion.version}: {champion_error}")}
           if champion_error else {}),
        **{key: dg.MetadataValue.float(value) for key, value in stability_figures(stability).items()},
        "holdout_pairs": dg.MetadataValue.int(len(holdout[0])),
        "holdout_fingerprint": dg.MetadataValue.text(ref.tags.get(model_tags.TAG_HOLDOUT_FINGERPRINT, "")),
        "metrics": dg.MetadataValue.md(_metrics_table(scores)),
        "mlflow_run": dg.MetadataValue.url(mlflow.run_url(experiment_id, ref.run_id)),
    })
    if history is not None:
        metadata["ndcg_history"] = dg.MetadataValue.md(history_md)
    check = dg.AssetCheckResult(
        check_name="challenger_beats_popularity", passed=bool(beats), severity=dg.AssetCheckSeverity.WARN,
        metadata={"challenger_ndcg_at_10": dg.MetadataValue.float(float(scores["challenger"][DECIDING])),
                  "popularity_ndcg_at_10": dg.MetadataValue.float(float(scores["popularity"][DECIDING]))})
    return dg.MaterializeResult(metadata=metadata, check_results=[check])


def ndcg_history_picture(client, name: str, path: Path, last: int = HISTORY_VERSIONS) -> Path | None:
    """NDCG@10 of challenger, champion (re-scored on each retrain's holdout) and popularity over the last
    ``last`` evaluated versions, from the `eval.*` version tags the evaluation writes."""
    with mlflow_errors("reading the evaluation history"):
        versions = client.search_model_versions(f"name = '{quoted(name)}'")
    evaluated = sorted((v for v in versions if model_tags.TAG_EVAL_CHALLENGER_NDCG in v.tags),
                       key=lambda v: int(v.version))
    if not evaluated:
        return None
    evaluated = evaluated[-last:]
    series = {role: [model_tags.tag_float(v.tags.get(model_tags.eval_ndcg_tag(role))) or math.nan for v in evaluated]
              for role in ("challenger", "champion", "popularity")}
    return plots.ndcg_history([f"v{v.version}" for v in evaluated], series, path)


# ------------------------------------------------------------------------------------------ champion


class ChampionConfig(dg.Config):
    margin: float = Field(default=0.0, ge=0, description="Promote only if challenger NDCG@10 > champion NDCG@10 + "
                                                          "margin (popularity over an ALS champion: the same margin).")
    popularity: bool = Field(default=True, description="Promote the popularity model where it measured best "
                                                       "(registered then); false: only the ALS challenger can be "
                                                       "promoted.")
    version: int | None = Field(default=None, description="Evaluated model version to gate; empty = this run's "
                                                         "challenger (the newest version when champion runs on its own).")
    stability_min_gain: float | None = Field(default=None, ge=0, description=(
        "The stability rule, off when empty: refuse a challenger that beats the champion by less than this "
        "NDCG@10 gain while it changes the first item of more than stability_max_first_item_changed of the "
        "holdout users' lists (the evaluation's first_item_changed_share against that champion)."))
    stability_max_first_item_changed: float = Field(default=0.5, ge=0, le=1, description=(
        "Share of the users' lists whose first item may change under a gain below stability_min_gain."))

    def stability_rule(self) -> StabilityRule | None:
        if self.stability_min_gain is None:
            return None
        return StabilityRule(self.stability_min_gain, self.stability_max_first_item_changed)


def register_popularity_of(client, mlflow: MLflowResource, ref, decision: GateDecision,
                           dagster_run_id: str):
    """Register the popularity model counted on challenger ``ref``'s training data (its bundle's ids, seen
    items and popularity ranking: exactly what the evaluation scored as popularity) as a version of its own."""
    from als_core.bundle import KIND_POPULARITY

    bundle = mlflow.load_version_bundle(ref.version)
    window = bundle.metadata.get("training_window") or ref.tags.get("training_window", "").split("..")
    popularity = bundle.as_popularity(metadata={
        "kind": KIND_POPULARITY,
        "ranking": "distinct users per item in the training data (ties: summed event weight, then item order); "
                   "a known user's seen items are skipped",
        "training_window": window,
        "counted_for_version": ref.version, "counted_for_run_id": ref.run_id,
        "holdout_fingerprint": ref.tags.get(model_tags.TAG_HOLDOUT_FINGERPRINT, ""),
        "ndcg@10": decision.popularity_ndcg, "dagster_run_id": dagster_run_id,
    })
    metrics = {key: value for key, value in run_log.run_metrics(client, ref.run_id).items()
               if key.startswith(("data_", "eval_popularity_"))}
    tags = {key: ref.tags[key] for key in (model_tags.TAG_HOLDOUT_FINGERPRINT, "training_window", "training_split",
                                           "training_snapshot") if key in ref.tags}
    tags[model_tags.TAG_DAGSTER_RUN_ID] = dagster_run_id
    end = window[-1] if window else ""
    return mlflow.register_popularity(client, ref, popularity, f"popularity {end}".strip(), tags, metrics)


def decision_word(decision: GateDecision) -> str:
    """promoted (the challenger), popularity promoted, or rejected (the champion stays)."""
    if decision.promote_popularity:
        return "popularity promoted"
    return "promoted" if decision.promote else "rejected"


def gate_summary(decision: GateDecision, fit_seconds: float | None) -> str:
    """The run's and version's description: decision, the three NDCG@10 on the same holdout, fit time."""
    champion = ("no champion" if decision.champion_version is None
                else f"champion v{decision.champion_version} {_ndcg(decision.champion_ndcg)}")
    popularity = "" if decision.popularity_version is None else f" (registered as v{decision.popularity_version})"
    lines = [
        f"**{decision_word(decision)}** ({decision.rule}): {decision.reason}",
        "",
        f"NDCG@10 on the same holdout: challenger v{decision.challenger_version} "
        f"{_ndcg(decision.challenger_ndcg)}, {champion}, popularity {_ndcg(decision.popularity_ndcg)}{popularity}",
    ]
    if fit_seconds is not None:
        lines.append(f"\nALS fit: {fit_seconds:.1f} s")
    return "\n".join(lines)


def _ndcg(value: float | None) -> str:
    return "not scored" if value is None else f"{value:.4f}"


@dg.asset(
    group_name=GROUP,
    deps=[evaluation],
    pool="promotion",
    kinds={"mlflow"},
    description="Moves the `champion` alias to the challenger if it beats the champion and popularity on the same "
                "holdout; where popularity measured best (no champion, or it beats the champion; or it refreshes a "
                "popularity champion) registers the popularity model and promotes it instead. A losing challenger "
                "is a normal outcome.",
)
def champion(context: dg.AssetExecutionContext, config: ChampionConfig, mlflow: MLflowResource) -> dg.MaterializeResult:
    with mlflow_failure_is_a_run_failure():
        client = mlflow.client()
        ref = target_version(client, mlflow, context, config.version)
        challenger_ndcg = model_tags.tag_float(ref.tags.get(model_tags.TAG_EVAL_CHALLENGER_NDCG))
        popularity_ndcg = model_tags.tag_float(ref.tags.get(model_tags.TAG_EVAL_POPULARITY_NDCG))
        if challenger_ndcg is None or popularity_ndcg is None:
            raise dg.Failure(description=f"{ref.name} v{ref.version} has no evaluation: materialise `evaluation` first")
        evaluated_version = ref.tags.get(model_tags.TAG_EVAL_CHAMPION_VERSION) or None
        evaluated = (int(evaluated_version) if evaluated_version else None,
                     model_tags.tag_float(ref.tags.get(model_tags.TAG_EVAL_CHAMPION_NDCG)))

        def rescore(version: int) -> float:
            context.log.info(f"champion changed to v{version} since evaluation: re-scoring it on the same holdout")
            bundle = mlflow.load_version_bundle(version)
            return _score(bundle, run_log.load_holdout(client, ref.run_id))[DECIDING]

        fingerprint = ref.tags.get(model_tags.TAG_HOLDOUT_FINGERPRINT, "")

        def register_popularity(decision: GateDecision) -> int:
            popularity = register_popularity_of(client, mlflow, ref, decision, context.run.run_id)
            context.log.info(f"registered popularity (counted on v{ref.version}'s training data) as "
                             f"{popularity.name} v{popularity.version}")
            return popularity.version

        decision = mlflow.promote_if_better(
            client, ref.version, challenger_ndcg, popularity_ndcg, evaluated, rescore, margin=config.margin,
            extra_tags={model_tags.TAG_GATE_DAGSTER_RUN_ID: context.run.run_id,
                        model_tags.TAG_GATE_HOLDOUT_FINGERPRINT: fingerprint},
            champion_load_error=ref.tags.get(model_tags.TAG_EVAL_CHAMPION_LOAD_ERROR) or None,
            register_popularity=register_popularity if config.popularity else None,
            stability_rule=config.stability_rule(),
            first_item_changed=model_tags.tag_float(ref.tags.get(model_tags.TAG_EVAL_FIRST_ITEM_CHANGED)))
        now = mlflow.aliases(client)
        champion_kind = (mlflow.version(client, now[model_tags.CHAMPION]).kind
                         if model_tags.CHAMPION in now else None)
        fit_seconds = run_log.run_metrics(client, ref.run_id).get("fit_seconds")
        summary = gate_summary(decision, fit_seconds)
        run_log.set_descriptions(client, ref.name, ref.version, ref.run_id, summary)
        if decision.popularity_version is not None:
            popularity_ref = mlflow.version(client, decision.popularity_version)
            run_log.set_descriptions(client, ref.name, popularity_ref.version, popularity_ref.run_id, summary)
    if decision.promote_popularity:
        outcome = f"POPULARITY PROMOTED as v{decision.popularity_version}"
    else:
        outcome = "PROMOTED" if decision.promote else "kept the champion"
    context.log.info(f"{outcome} ({decision.rule}): {decision.reason}")
    if decision.champion_load_error:
        context.log.error(f"champion v{decision.champion_version} cannot be loaded: {decision.champion_load_error}")
    # the numbers first, as floats and ints, so Dagster plots them across retrains (the asset's Plots tab)
    metadata = {
        "challenger_ndcg_at_10": dg.MetadataValue.float(float(decision.challenger_ndcg)),
        "popularity_ndcg_at_10": dg.MetadataValue.float(float(decision.popularity_ndcg)),
        **({"champion_ndcg_at_10": dg.MetadataValue.float(float(decision.champion_ndcg))}
           if decision.champion_ndcg is not None else {}),
        "promoted": dg.MetadataValue.int(int(decision.promote)),
        **({"fit_seconds": dg.MetadataValue.float(fit_seconds)} if fit_seconds is not None else {}),
        "decision": dg.MetadataValue.text(decision_word(decision)),
        "rule": dg.MetadataValue.text(decision.rule),
        "reason": dg.MetadataValue.text(decision.reason),
        **({"champion_load_error": dg.MetadataValue.text(
            f"v{decision.champion_version}: {decision.champion_load_error}")} if decision.champion_load_error else {}),
        "challenger_version": dg.MetadataValue.int(ref.version),
        "margin": dg.MetadataValue.float(float(decision.margin)),
        "holdout_fingerprint": dg.MetadataValue.text(fingerprint),
        "dagster_run_id": dg.MetadataValue.text(context.run.run_id),
        "champion_version": dg.MetadataValue.int(now[model_tags.CHAMPION]) if model_tags.CHAMPION in now
        else dg.MetadataValue.text("none"),
        "champion_kind": dg.MetadataValue.text(champion_kind or "none"),
    }
    if decision.popularity_version is not None:
        metadata["popularity_version"] = dg.MetadataValue.int(decision.popularity_version)
    if decision.champion_ndcg is not None:
        metadata["compared_with_version"] = dg.MetadataValue.int(decision.champion_version)
    return dg.MaterializeResult(metadata=metadata)


# ------------------------------------------------------------------------------------------ recommendations


def ranking_factors(model) -> tuple[np.ndarray, np.ndarray]:
    """User and item factors whose dot products rank items as ``model`` does: an explicit model with item
    biases ranks by x.y + item bias, so the biases become one more item column against a column of ones."""
    if not model.use_biases:
        return model.user_factors, model.item_factors
    ones = np.ones((model.n_users, 1), dtype=model.user_factors.dtype)
    return (np.hstack([model.user_factors, ones]),
            np.hstack([model.item_factors, model.item_bias[:, None].astype(model.item_factors.dtype)]))


def spark_scorer(spark: SparkEngine, context: dg.AssetExecutionContext, bundle, directory: Path,
                 metadata: dict[str, dg.MetadataValue]) -> recommendations_table.Scorer:
    """Scores the bundle's ALS lists on Spark (`SparkEngine.score`, seen items from the bundle's own record);
    ``metadata`` receives the asset's metadata of it: users, the job's report, the seconds spent moving data
    (the resource's, plus reading the lists back here) and scoring."""
    user_factors, item_factors = ranking_factors(bundle.model)

    def score(rows: np.ndarray, n: int) -> Iterator:
        out = directory / "spark-scored"
        result = spark.score(context, user_factors[rows], item_factors, bundle.seen[rows], n, out)
        started = time.perf_counter()
        yield from recommendations_table.staged_from(out, rows)
        metadata.update({
            "spark_users": dg.MetadataValue.int(len(rows)), "spark_rows": dg.MetadataValue.int(result.rows_written),
            "spark": dg.MetadataValue.json(result.report),
            "spark_seconds_moving": dg.MetadataValue.float(result.seconds_moving + time.perf_counter() - started),
            "spark_seconds_scoring": dg.MetadataValue.float(result.seconds_scoring)})

    return score


class RecommendationsConfig(dg.Config):
    n: int = Field(default=50, ge=1, le=1000, description="Recommendations per user.")
    engine: Literal[ENGINES] = Field(default="numba", description=(
        "Where the ALS lists are scored. numba: here, in batches. spark: on the cluster of the `spark` resource "
        "(ALS_SPARK_MASTER; local[*] when unset; needs Java 17 and the `spark` extra). The same lists either way "
        "(seen items excluded, best first, ties by item index). A popularity champion has no factors: the numba "
        "path scores it whatever the engine."))
    batch_size: int = Field(default=20000, ge=1, description="Users scored per batch (bounds memory: a batch holds "
                                                              "its users' lists, about 12 bytes per recommendation).")
    force: bool = Field(default=False, description="Score again even when the table already holds the "
                                                   "champion's top-n (a registered version never changes).")


@dg.asset(
    group_name=GROUP,
    deps=[champion],
    pool="duckdb",
    kinds={"duckdb", "mlflow"},
    description="The champion's top-N (ALS or popularity, seen items excluded) for every user it knows, in DuckDB "
                "table `recommendations` (replaced whole when the champion or N changes; left alone while it already "
                "holds them). Scored here (engine numba) or on Spark (engine spark: ALS champions; a popularity "
                "champion is scored here whatever the engine).",
)
def recommendations(context: dg.AssetExecutionContext, config: RecommendationsConfig, mlflow: MLflowResource,
                    duckdb: DuckDBResource, pipeline: PipelineSettings, spark: SparkEngine) -> dg.MaterializeResult:
    with mlflow_failure_is_a_run_failure():
        champion_now = mlflow.champion(mlflow.client())  # fails fast when MLflow is down
        if champion_now is not None and not config.force:
            with duckdb.connect() as con:
                recommendations_table.ensure_schema(con)
                held = recommendations_table.holds(con, table_model(champion_now, config.n))
            if held is not None:
                context.log.info(f"`recommendations` already holds champion v{champion_now.version}'s top "
                                 f"{config.n} ({held} rows): left as it is (force=true scores again)")
                return dg.MaterializeResult(metadata={
                    "champion_version": dg.MetadataValue.int(champion_now.version),
                    "rows": dg.MetadataValue.int(held), "n": dg.MetadataValue.int(config.n),
                    "rescored": dg.MetadataValue.bool(False)})
        try:
            loaded = None if champion_now is None else \
                (champion_now, mlflow.load_version_bundle(champion_now.version))
        except BundleUnloadable as exc:
            raise dg.Failure(description=f"{exc}. `recommendations` left as they were. Make a loadable version "
                                         f"the champion: `.venv/bin/python -m pipelines registry promote VERSION` (or "
                                         f"`registry rollback`).") from exc
    if loaded is None:
        context.log.warning(f"{mlflow.model_name} has no champion yet: `recommendations` left unchanged")
        return dg.MaterializeResult(metadata={"champion_version": dg.MetadataValue.text("none"),
                                              "rows": dg.MetadataValue.int(0)})
    ref, bundle = loaded
    prescored = scored_lists.load(pipeline.settings, ref.run_id, min(config.n, len(bundle.items)))
    engine = config.engine if bundle.model is not None else "numba"
    engine_metadata = {"engine": dg.MetadataValue.text(engine)}
    if engine != config.engine:
        engine_metadata["engine_note"] = dg.MetadataValue.text(
            f"a {bundle.kind} champion has no factors: scored by the numba path (engine {config.engine} asked)")
        context.log.info(engine_metadata["engine_note"].value)
    context.log.info(f"scoring {len(bundle.user_ids)} users with champion v{ref.version} ({bundle.kind}), "
                     f"top {config.n}, engine {engine}")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="recommendations-") as tmp:
        scorer = spark_scorer(spark, context, bundle, Path(tmp), engine_metadata) if engine == "spark" else None
        _, staged = recommendations_table.stage(bundle, ref.version, config.n, config.batch_size, Path(tmp),
                                                context.log.info, prescored, scorer)
        with duckdb.connect() as con:
            recommendations_table.ensure_schema(con)
            recommendations_table.replace(con, staged, table_model(ref, config.n))
            rows, users, distinct_items, version = sql_files.run(con, "recommendations_summary").fetchone()
            preview = sql_files.run(con, "recommendations_preview", {"limit_rows": 10}).fetchall()
    seconds = time.perf_counter() - started
    context.log.info(f"wrote {rows} rows for {users} users in {seconds:.1f}s")
    return dg.MaterializeResult(metadata={
        "champion_version": dg.MetadataValue.int(int(version)),
        "champion_kind": dg.MetadataValue.text(bundle.kind),
        "rows": dg.MetadataValue.int(int(rows)),
        "users": dg.MetadataValue.int(int(users)),
        "distinct_items": dg.MetadataValue.int(int(distinct_items)),
        "n": dg.MetadataValue.int(config.n),
        "rescored": dg.MetadataValue.bool(True),
        "prescored_users": dg.MetadataValue.int(0 if prescored is None else len(prescored.rows)),
        "seconds": dg.MetadataValue.float(seconds),
        **engine_metadata,
        "preview": dg.MetadataValue.md(markdown_table(["user_id", "rank", "item_id", "score", "model_version"],
                                                      [list(row) for row in preview])),
    })
