"""The recommendation API: FastAPI app factory, lifespan (model watcher, fold-in refresher) and endpoints.

A single user whose answer scores the catalogue (a known user, a fold-in) is scored in the app's scoring pool,
one thread per core, where the numba kernel runs without the GIL while the event loop goes on; popularity
answers stay on the loop (microseconds). Batches, re-ranking and explanations run in FastAPI's threadpool. More
cores: more uvicorn workers (`python -m serving --workers N`). BLAS is held to one thread per process so that
nothing oversubscribes.
"""


import asyncio
import contextlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Annotated

from fastapi import Body, FastAPI, HTTPException, Path, Query
from fastapi.concurrency import run_in_threadpool
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException
from threadpoolctl import threadpool_limits

from serving.config import ServingConfig
from serving.fold_in import WarehouseEvents
from serving.limits import BodyLimit, undecodable_body, validation_errors
from serving.model_source import BundleDirSource, MlflowChampionSource, ModelSource, ModelWatcher
from serving.schemas import (
    ID_PATTERN,
    MAX_ID_LENGTH,
    BatchResponse,
    ErrorResponse,
    ExplainedRecommendationsResponse,
    HealthResponse,
    ModelInfo,
    ModelRef,
    ReadyResponse,
    RecommendationsResponse,
    RerankResponse,
    SimilarItemsResponse,
    batch_request_model,
    rerank_request_model,
)
from serving.service import NoSimilarItems, NotReady, RecommendationService, UnknownItem, reading_for

log = logging.getLogger(__name__)

RETRY_AFTER_S = "5"
FOLD_IN_MODEL_CHECK_S = 0.25  # how soon after a swap the new model's own events are read
NOT_READY = {503: {"model": ErrorResponse, "description": "No model loaded yet; the detail says why."}}
TOO_LARGE = {413: {"model": ErrorResponse, "description": "Body over ALS_SERVING_MAX_BODY_BYTES (default 1 MiB)."}}


def default_source(config: ServingConfig) -> ModelSource:
    if config.bundle_dir is not None:
        return BundleDirSource(config.bundle_dir)
    return MlflowChampionSource(config.tracking_uri, config.model_name)


async def _refresh_events(events: WarehouseEvents, watcher: ModelWatcher, every_s: float) -> None:
    """Re-read recent warehouse events for fold-in, for whichever model is live (its window decides the days,
    its weighting the weights): every ``every_s``, and at once when a model with another window or weighting
    goes live. A popularity model folds nobody in."""
    while True:
        model = watcher.current
        if model is not None and model.bundle.model is not None:
            reading = reading_for(model)
            if events.due(reading, every_s):
                try:
                    await asyncio.to_thread(events.refresh, reading)
                except Exception:
                    log.exception("fold-in refresh crashed")
        await asyncio.sleep(min(every_s, FOLD_IN_MODEL_CHECK_S))


def create_app(config: ServingConfig | None = None, source: ModelSource | None = None) -> FastAPI:
    config = config or ServingConfig.from_env()
    watcher = ModelWatcher(source or default_source(config), config.poll_seconds, config.max_n)
    events = (WarehouseEvents(config.duckdb_path, config.fold_in_max_age_seconds, config.fold_in_lookback_days,
                              config.fold_in_max_events) if config.fold_in else None)
    service = RecommendationService(watcher, events)
    default_n = min(10, config.max_n)
    BatchRequest = batch_request_model(config.max_n, config.max_batch)
    RerankRequest = rerank_request_model(config.max_batch)
    # Single-user scoring gets its own pool, one thread per core: the kernel streams the item factors from
    # memory, so more threads at once only queue on the memory bus, and FastAPI's pool (40 threads) would let
    # 40 requests score at once, each then waiting for the GIL with the event loop.
    scoring: list[ThreadPoolExecutor] = []  # the pool of the running lifespan

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        blas = threadpool_limits(limits=1, user_api="blas")
        scoring.append(ThreadPoolExecutor(len(os.sched_getaffinity(0)), thread_name_prefix="scoring"))
        tasks = [asyncio.create_task(watcher.run(), name="model-watcher")]
        if events is not None:
            tasks.append(asyncio.create_task(_refresh_events(events, watcher, config.fold_in_refresh_seconds),
                                             name="fold-in-refresh"))
        log.info("serving %s (poll every %gs)", watcher.source.describe(), config.poll_seconds)
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            scoring.pop().shutdown(wait=False, cancel_futures=True)
            blas.restore_original_limits()

    app = FastAPI(
        title="ALS recommendations",
        version="1",
        summary="Top-N recommendations and similar items from the MLflow champion.",
        lifespan=lifespan,
    )
    app.add_middleware(BodyLimit, max_bytes=config.max_body_bytes)
    app.state.config = config
    app.state.watcher = watcher
    app.state.events = events
    app.state.service = service

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": validation_errors(exc)}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request, exc: StarletteHTTPException) -> Response:
        errors = undecodable_body(exc)
        if errors is not None:
            return JSONResponse({"detail": errors}, status_code=422)
        return await http_exception_handler(request, exc)

    @app.exception_handler(NotReady)
    async def not_ready(request, exc: NotReady) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": RETRY_AFTER_S})

    def model_ref(model) -> ModelRef:
        return ModelRef(name=model.key.name, version=model.key.version)

    def scored(item_ids: list, scores: list) -> list[dict]:
        return [{"item_id": i, "score": s} for i, s in zip(item_ids, scores)]

    def json_response(body: BaseModel) -> Response:
        """The validated body serialised once, in pydantic's Rust serialiser (FastAPI would dump it to a dict,
        validate that again and serialise it in Python: ~30 us of a sub-millisecond request). The
        `response_model` of each route still documents it."""
        return Response(body.model_dump_json(), media_type="application/json")

    IdPath = Annotated[str, Path(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
    TopN = Annotated[int, Query(ge=1, le=config.max_n, description="How many items to return.")]

    # Before /recommendations/{user_id}: a POST there is the batch, and an OPTIONS is answered `Allow: POST` as
    # documented (GET /recommendations/batch still reaches the single-user route, for a user called "batch").
    @app.post("/recommendations/batch", response_model=BatchResponse, responses={**NOT_READY, **TOO_LARGE},
              tags=["recommendations"])
    def recommendations_batch(request: Annotated[BatchRequest, Body()]) -> Response:
        """Top-n for up to `max_batch` users in one request (same rules as the single-user endpoint)."""
        model = service.model()
        results = service.recommend(model, service.plan(model, list(request.user_ids)), request.n)
        return json_response(BatchResponse(model=model_ref(model), results=[
            {"user_id": r.user_id, "source": r.source,
             "recommendations": scored(r.item_ids, r.scores)}
            for r in results]))

    Explain = Annotated[bool, Query(description=(
        "Also say why: per recommended item, the user's items that contributed most to its score and their "
        "share (`explanation`); popularity answers say what the list is instead."))]

    @app.get("/recommendations/{user_id}", response_model=RecommendationsResponse | ExplainedRecommendationsResponse,
             responses=NOT_READY, tags=["recommendations"])
    async def recommendations(user_id: IdPath, n: TopN = default_n, explain: Explain = False) -> Response:
        """Top-n items for one user, items the user already interacted with excluded. Users the model does not
        know are folded in from their recent warehouse events if they have some, else get the most popular
        items. With `explain=true` the answer also has an `explanation`."""
        model = service.model()
        plan = service.plan(model, [user_id])
        if explain:
            return await run_in_threadpool(explained_recommendations, model, plan, n)
        if plan.scores_items:
            # the scoring kernels release the GIL: in a thread, a worker's scoring runs on every core while its
            # event loop goes on parsing and answering (connections are not spread evenly over the workers)
            result = (await asyncio.get_running_loop().run_in_executor(
                scoring[-1], service.recommend, model, plan, n))[0]
        else:
            result = service.recommend(model, plan, n)[0]
        return json_response(RecommendationsResponse(
            user_id=result.user_id, source=result.source, model=model_ref(model),
            recommendations=scored(result.item_ids, result.scores)))

    def explained_recommendations(model, plan, n: int) -> Response:
        result = service.recommend(model, plan, n)[0]
        return json_response(ExplainedRecommendationsResponse(
            user_id=result.user_id, source=result.source, model=model_ref(model),
            recommendations=scored(result.item_ids, result.scores),
            explanation=service.explain(model, plan, result)))

    @app.post("/recommendations/{user_id}/rerank", response_model=RerankResponse,
              responses={**NOT_READY, **TOO_LARGE}, tags=["recommendations"])
    def rerank(user_id: IdPath, request: Annotated[RerankRequest, Body()]) -> Response:
        """The caller's candidate items (e.g. search results) ranked for one user, best first: scored as GET
        /recommendations scores that user (ALS, fold-in, or popularity for users the model cannot score).
        Candidates the model does not know come back apart under `unknown`; those the user interacted with
        under `seen` (unless `exclude_seen` is false)."""
        model = service.model()
        result = service.rerank(model, service.plan(model, [user_id]), list(request.item_ids), request.n,
                                request.exclude_seen)
        return json_response(RerankResponse(
            user_id=result.user_id, source=result.source, model=model_ref(model),
            ranked=scored(result.item_ids, result.scores),
            seen=result.seen, unknown=result.unknown))

    @app.get("/similar-items/{item_id}", response_model=SimilarItemsResponse,
             responses={**NOT_READY, 404: {"model": ErrorResponse, "description": (
                 "The model does not know the item, or the served model is a popularity model (it has no item "
                 "factors, so no similar items); the detail says which.")}},
             tags=["recommendations"])
    async def similar_items(item_id: IdPath, n: TopN = default_n) -> Response:
        """Items closest to `item_id` by cosine similarity of item factors (an ALS model only)."""
        model = service.model()
        try:
            ids, scores = service.similar_items(model, item_id, n)
        except NoSimilarItems:
            raise HTTPException(404, detail=f"{model.key.name} version {model.key.version} is a popularity model: "
                                            "it has no item factors, so no similar items (they come back when an "
                                            "ALS version is champion; GET /model says the kind)") from None
        except UnknownItem:
            raise HTTPException(404, detail=f"item {item_id!r} is unknown to {model.key.name} "
                                            f"version {model.key.version}") from None
        return json_response(SimilarItemsResponse(
            item_id=item_id, model=model_ref(model),
            similar_items=scored(ids, scores)))

    def openapi() -> dict:
        # FastAPI's OpenAPI model holds `minimum`/`maximum` as floats, so the int64 bound of a batch id would be
        # published as 9.223372036854776e18 (2**63, past what is accepted): publish pydantic's exact schema.
        if app.openapi_schema is None:
            document = FastAPI.openapi(app)
            for body in (BatchRequest, RerankRequest):
                document["components"]["schemas"][body.__name__] = body.model_json_schema(
                    ref_template="#/components/schemas/{model}")
        return app.openapi_schema

    app.openapi = openapi

    @app.get("/health", response_model=HealthResponse, tags=["operations"])
    async def health() -> HealthResponse:
        """The process is up (says nothing about the model: see /ready)."""
        return HealthResponse()

    @app.get("/ready", response_model=ReadyResponse, responses={503: {"model": ReadyResponse}}, tags=["operations"])
    async def ready() -> JSONResponse:
        """200 once a model is loaded; 503 with the reason until then."""
        model = watcher.current
        status = watcher.status
        body = ReadyResponse(ready=model is not None, reason=status.reason,
                             model=None if model is None else model_ref(model), last_poll_at=status.last_poll_at,
                             last_error=status.last_error, fold_in=None if events is None else events.status())
        return JSONResponse(body.model_dump(), status_code=200 if model is not None else 503,
                            headers=None if model is not None else {"Retry-After": RETRY_AFTER_S})

    @app.get("/model", response_model=ModelInfo, responses=NOT_READY, tags=["operations"])
    async def model_info() -> ModelInfo:
        """The served model: name, version, kind (als or popularity), when it was trained, its NDCG@10 and data
        sizes."""
        return ModelInfo(**service.model().info)

    return app
