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
import logging  # noqa: E402

import uvicorn  # noqa: E402

from serving.config import ServingConfig  # noqa: E402


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
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    uvicorn.run("serving.app:create_app", factory=True, host=args.host, port=args.port, workers=args.workers,
                log_level=args.log_level, access_log=args.access_log)


if __name__ == "__main__":
    main()
