"""`python -m pipelines registry show|rollback|promote VERSION|copy-champion --from URI`: the operator's view of
the registry and the changes made by hand, against the pipeline's settings (environment)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from als_store.mlflow_store import RegistryError, bound_mlflow_http, check_reachable, make_client
from als_store.model_registry import describe
from als_store.model_tags import PREVIOUS_CHAMPION
from pipelines.registry.locks import deployment_promotion_lock
from pipelines.registry.promotion import AlreadyChampion, operator_name, promote_by_hand, rollback
from pipelines.registry.transfer import copy_champion


def main(argv: Sequence[str] | None = None) -> int:
    from als_store.settings import Settings

    settings = Settings.from_env()
    parser = argparse.ArgumentParser(
        prog="python -m pipelines registry",
        description="show: the aliases and the newest versions with their scores and gate decisions (JSON); "
                    "rollback: champion <- previous_champion; promote VERSION: make VERSION the champion "
                    "(it must exist, be READY and load; the old champion becomes previous_champion); "
                    "copy-champion --from URI: copy the champion and previous_champion of the store at URI into "
                    "this one, with their bundles, tags and aliases (docs/deploy.md).")
    parser.add_argument("command", choices=["show", "rollback", "promote", "copy-champion"])
    parser.add_argument("version", nargs="?", type=int, help="promote: the version to make champion")
    parser.add_argument("--reason", default=None, help="promote: why, recorded in the version's tags")
    parser.add_argument("--limit", type=int, default=10, help="show: how many of the newest versions to list")
    parser.add_argument("--model-name", default=settings.model_name)
    parser.add_argument("--tracking-uri", default=settings.mlflow_tracking_uri)
    parser.add_argument("--from", dest="source_uri", default=None,
                        help="copy-champion: the tracking URI of the store to copy from (e.g. sqlite:////abs/mlflow.db)")
    parser.add_argument("--force", action="store_true",
                        help="copy-champion: copy even though this store has a champion (it becomes previous_champion "
                             "unless the source has one)")
    args = parser.parse_args(argv)
    if (args.command == "promote") != (args.version is not None):
        parser.error("VERSION goes with `promote`, and only with it")
    if (args.command == "copy-champion") != (args.source_uri is not None):
        parser.error("--from URI goes with `copy-champion`, and only with it")
    bound_mlflow_http()  # a dead server answers in seconds, not after MLflow's minutes of retries
    name, uri = args.model_name, args.tracking_uri
    try:
        check_reachable(uri)
        client = make_client(uri)
        # the lock the gate of every machine of this deployment takes (`show` changes nothing)
        lock = None if args.command == "show" else deployment_promotion_lock(settings, uri, name)
        if args.command == "rollback":
            demoted, restored = rollback(client, name, lock)
            print(f"{name}: champion v{demoted} -> v{restored} (v{demoted} is now {PREVIOUS_CHAMPION})")
        elif args.command == "promote":
            try:
                replaced = promote_by_hand(uri, name, args.version, lock, operator_name(), args.reason)
            except AlreadyChampion as exc:  # what was asked for holds already: not an error
                print(f"{exc}")
            else:
                was = "none" if replaced is None else f"v{replaced}"
                print(f"{name}: champion {was} -> v{args.version}"
                      + ("" if replaced is None else f" (v{replaced} is now {PREVIOUS_CHAMPION})"))
        elif args.command == "copy-champion":
            done = copy_champion(args.source_uri, uri, name, lock, force=args.force,
                                 artifact_root=settings.mlflow_artifact_root)
            print("\n".join(done.lines()))
        print(json.dumps(describe(client, name, args.limit), indent=2))
    except RegistryError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
