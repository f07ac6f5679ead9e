"""`python -m serving`: run the API under uvicorn (settings from the environment, see docs/serving.md)."""

from __future__ import annotations

import os

# Before numpy/numba load: one BLAS/OpenMP/numba thread per process. Requests already run in parallel in the
# threadpool (and in worker processes); nested thread pools would only oversubscribe the cores.
for _name in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ.setdefault(_name, "1")
# A dead tracking server should fail a poll in seconds, not after MLflow's default minutes of retries.
os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # a download is not a terminal session

import argparse  # noqa: E402
import asyncio  # noqa: E402
import contextlib  # noqa: E402
import copy  # noqa: E402
import gc  # noqa: E402
import logging  # noqa: E402
import time  # noqa: E402

import uvicorn  # noqa: E402
import uvicorn.config  # noqa: E402

from serving.config import ServingConfig  # noqa: E402


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(process)d]: %(message)s"
FREEZE_AFTER_S = 2.0  # after the first model is live: its first fold-in read has imported what it imports

log = logging.getLogger("serving")


async def _freeze_once_serving(watcher) -> None:
    """Move everything alive once the first model serves (modules, the app, numba's dispatchers: ~200k objects)
    out of the garbage collector's reach. A full collection walks every tracked object: ~100-300 ms on this
    machine with all of them, a stall of every request on the worker, which lands in the p99."""
    while watcher.current is None:
        await asyncio.sleep(0.25)
    await asyncio.sleep(FREEZE_AFTER_S)
    started = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info("garbage collector: %d objects frozen in %.0f ms", gc.get_freeze_count(),
             (time.perf_counter() - started) * 1e3)


def create_served_app():
    """`serving.app.create_app` plus what only a serving process does (not an app built in a test): the
    freeze above, from the app's lifespan, in every worker."""
    from serving.app import create_app

    app = create_app()
    inner = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(app):
        async with inner(app) as state:
            task = asyncio.create_task(_freeze_once_serving(app.state.watcher), name="gc-freeze")
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return app


def log_config(level: str) -> dict:
    """uvicorn's logging config plus a handler on the root logger for the service's own loggers (model swaps,
    failed loads, fold-in). uvicorn applies it in every worker process it spawns, where a `basicConfig` in this
    parent never runs; the process id tells the workers apart."""
    config = copy.deepcopy(uvicorn.config.LOGGING_CONFIG)
    config["formatters"]["service"] = {"format": LOG_FORMAT}
    config["handlers"]["service"] = {"formatter": "service", "class": "logging.StreamHandler",
                                     "stream": "ext://sys.stderr"}
    config["root"] = {"handlers": ["service"], "level": level.upper()}
    return config


def uvicorn_settings(workers: int | None) -> dict:
    """How uvicorn runs the API (bench/serve.py runs its anchor with the same): uvloop and httptools, the C
    event loop and HTTP parser, named rather than left to uvicorn's "auto", which quietly falls back to the
    pure-Python ones when they are missing."""
    return {"workers": workers, "loop": "uvloop", "http": "httptools"}


def main(argv: list[str] | None = None) -> None:
    config = ServingConfig.from_env()
    parser = argparse.ArgumentParser(prog="python -m serving", description=__doc__)
    parser.add_argument("--host", default=config.host, help="default $ALS_SERVING_HOST or 127.0.0.1")
    parser.add_argument("--port", type=int, default=config.port, help="default $ALS_SERVING_PORT or 8000")
    parser.add_argument("--workers", type=int, default=config.workers,
                        help="uvicorn worker processes, each loading the model and polling MLflow itself "
                             "(default $ALS_SERVING_WORKERS or 1; use the number of cores)")
    parser.add_argument("--log-level", default="info")
    parser.add_argument("--access-log", action="store_true", help="log every request (costs throughput)")
    args = parser.parse_args(argv)
    uvicorn.run("serving.__main__:create_served_app", factory=True, host=args.host, port=args.port,
                log_config=log_config(args.log_level), log_level=args.log_level, access_log=args.access_log,
                **uvicorn_settings(args.workers))


if __name__ == "__main__":
    main()
