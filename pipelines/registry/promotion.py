"""Moving the aliases under the promotion lock (pipelines/registry/locks.py): the gate's compare-and-set
(`promote_if_better`), a rollback and a promotion by hand. Every move of ``champion`` goes through `move_aliases`
under the lock, so the old champion always becomes ``previous_champion`` and a failure half-way puts the aliases
back."""

from __future__ import annotations

import contextlib
import dataclasses
import getpass
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from als_store.mlflow_store import BundleUnloadable, RegistryError, make_client, mlflow_errors
from als_store.model_registry import VersionRef, aliases, get_version, load_version_bundle, version_or_none
from als_store.model_tags import (CHAMPION, PREVIOUS_CHAMPION, TAG_GATE_DECIDED_AT, TAG_GATE_ROLLED_BACK_AT,
                                  TAG_MANUAL_PROMOTED_AT, TAG_MANUAL_PROMOTED_BY, TAG_MANUAL_REASON,
                                  TAG_MANUAL_REPLACED, TAG_POPULARITY_OF)
from pipelines.registry.gate import GateDecision, StabilityRule, decide
# lock_path_for: re-exported for the callers that import it from here
from pipelines.registry.locks import PromotionLock, lock_path_for, promotion_lock  # noqa: F401
from pipelines.registry.registration import set_version_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient


def promote_if_better(
    client: MlflowClient,
    name: str,
    challenger_version: int,
    challenger_ndcg: float,
    popularity_ndcg: float,
    evaluated_champion: tuple[int | None, float | None],
    score_champion: Callable[[int], float],
    lock_path: PromotionLock | Path | str,  # a lock of pipelines.registry.locks, or a file lock's path
    margin: float = 0.0,
    extra_tags: Mapping[str, str] | None = None,
    champion_load_error: str | None = None,
    register_popularity: Callable[[GateDecision], int] | None = None,
    stability_rule: StabilityRule | None = None,
    first_item_changed: float | None = None,
) -> GateDecision:
    """Move ``champion`` to the challenger if it wins; the replaced version becomes ``previous_champion``.

    Compare-and-set under an exclusive lock: the champion alias is re-read just before moving it, and if it
    changed since evaluation (another retrain promoted meanwhile) the new champion is re-scored with
    ``score_champion(version)`` on the challenger's holdout before deciding. So two racing retrains end with
    the better model as champion. The decision and scores become tags of the challenger version.

    ``champion_load_error``: why the evaluated champion could not be scored (its NDCG is then None);
    ``score_champion`` raises BundleUnloadable for a champion that cannot be loaded. Either way the
    `champion_unscorable` rule decides.

    ``register_popularity(decision) -> version``: registers the popularity model counted on the challenger's
    training data (the baseline scored as ``popularity_ndcg``). Given, the gate may promote popularity (see
    `decide`): it is registered only then, under the lock, so a retrain where it does not win adds nothing
    to the registry. The popularity version gets the decision's `popularity_tags`.

    ``stability_rule``, ``first_item_changed``: `decide`'s optional stability rule and the evaluation's share of
    users whose first item the challenger changes against the evaluated champion (not used against another).
    """
    evaluated_version, evaluated_ndcg = evaluated_champion
    with promotion_lock(lock_path):
        current = aliases(client, name).get(CHAMPION)
        current_ref = None if current is None else get_version(client, name, current)
        champion_kind = None if current_ref is None else current_ref.kind
        popularity_of = None if current_ref is None else current_ref.tags.get(TAG_POPULARITY_OF)
        load_error = None
        if current is None or current == challenger_version:
            champion_ndcg = None
        elif current == evaluated_version:
            champion_ndcg, load_error = evaluated_ndcg, champion_load_error
        else:
            try:
                champion_ndcg = score_champion(current)
            except BundleUnloadable as exc:
                champion_ndcg, load_error = None, exc.cause
        decision = decide(challenger_version, challenger_ndcg, current, champion_ndcg, popularity_ndcg, margin,
                          champion_load_error=load_error, champion_kind=champion_kind,
                          popularity_available=register_popularity is not None,
                          champion_popularity_of=int(popularity_of) if popularity_of else None,
                          stability_rule=stability_rule,
                          first_item_changed=first_item_changed if current == evaluated_version else None)
        promoted = challenger_version if decision.promote else None
        if decision.promote_popularity:
            promoted = int(register_popularity(decision))
            decision = dataclasses.replace(decision, popularity_version=promoted)
        if promoted is not None:
            moves = {CHAMPION: promoted} if current is None else {PREVIOUS_CHAMPION: current, CHAMPION: promoted}
            move_aliases(client, name, moves)
        decided = {TAG_GATE_DECIDED_AT: _utc_now(), **(extra_tags or {})}
        set_version_tags(client, VersionRef(name, challenger_version, None, {}), {**decision.tags(), **decided})
        if decision.promote_popularity:
            set_version_tags(client, VersionRef(name, promoted, None, {}), {**decision.popularity_tags(), **decided})
    return decision


def move_aliases(client: MlflowClient, name: str, moves: Mapping[str, int]) -> None:
    """Set ``moves`` ({alias: version}, in order) as one step: if MLflow fails half-way, the aliases already
    moved are put back where they were (MLflow has no transaction across aliases). Call under the lock."""
    before = aliases(client, name)
    done: list[str] = []
    try:
        with mlflow_errors(f"moving the aliases of {name!r}"):
            for alias, version in moves.items():
                client.set_registered_model_alias(name, alias, str(int(version)))
                done.append(alias)
    except BaseException:
        with contextlib.suppress(Exception):
            for alias in reversed(done):
                if alias in before:
                    client.set_registered_model_alias(name, alias, str(before[alias]))
                else:
                    client.delete_registered_model_alias(name, alias)
        raise


def rollback(client: MlflowClient, name: str, lock_path: PromotionLock | Path | str | None = None,
             check_loads: bool = True) -> tuple[int, int]:
    """Point ``champion`` back at ``previous_champion``; the demoted version becomes ``previous_champion``,
    so a second rollback undoes the first. Returns (demoted version, restored version). Refuses (nothing
    changed) when there is no ``previous_champion``, it is the champion itself, or (``check_loads``) its
    bundle does not load."""
    lock = promotion_lock(lock_path) if lock_path is not None else contextlib.nullcontext()
    with lock:
        current = aliases(client, name)
        if PREVIOUS_CHAMPION not in current:
            raise RegistryError(f"model {name!r} has no `{PREVIOUS_CHAMPION}` alias: nothing to roll back to")
        restored = current[PREVIOUS_CHAMPION]
        demoted = current.get(CHAMPION)
        if demoted == restored:
            raise RegistryError(f"model {name!r}: `{PREVIOUS_CHAMPION}` is the champion itself (v{restored}): "
                                f"nothing to roll back to")
        if check_loads:
            try:
                load_version_bundle(client.tracking_uri, name, restored)
            except BundleUnloadable as exc:
                raise RegistryError(f"`{PREVIOUS_CHAMPION}`: {exc}: nothing changed; make a version that loads the "
                                    f"champion with `.venv/bin/python -m pipelines registry promote VERSION`") from exc
        if demoted is None:
            move_aliases(client, name, {CHAMPION: restored})
        else:
            move_aliases(client, name, {PREVIOUS_CHAMPION: demoted, CHAMPION: restored})
            with mlflow_errors(f"tagging {name} version {demoted}"):
                client.set_model_version_tag(name, str(demoted), TAG_GATE_ROLLED_BACK_AT, _utc_now())
    return (demoted if demoted is not None else restored), restored


def _utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def operator_name() -> str:
    """Who runs this command: the login name (getpass: $LOGNAME, $USER, ..., then the password database)."""
    try:
        return getpass.getuser()
    except Exception:  # no such variable and no passwd entry (a bare container)
        return os.environ.get("USER") or "unknown"


class AlreadyChampion(RegistryError):
    """A promotion by hand of the version that is the champion already: nothing to do, nothing done."""


def promote_by_hand(tracking_uri: str, name: str, version: int, lock_path: PromotionLock | Path | str, who: str,
                    reason: str | None = None) -> int | None:
    """Make ``version`` the champion by an operator's decision, with the bookkeeping the gate keeps: the old
    champion becomes ``previous_champion``, both aliases move under the promotion lock in one step, and the
    version's tags record who, when, why and which champion it replaced. Returns the replaced champion (None
    if there was none).

    Refuses with RegistryError, the registry left exactly as it was, when the version does not exist, is not
    READY or its bundle does not load. A version that is the champion already is left as it is (nothing
    moved, no tags): AlreadyChampion."""
    client = make_client(tracking_uri)
    mv = version_or_none(client, name, version)
    if mv is None:
        raise RegistryError(f"model {name!r} has no version {version}: nothing changed")
    if mv.status != "READY":
        raise RegistryError(f"{name} version {version} is {mv.status}, not READY: nothing changed")
    try:
        load_version_bundle(tracking_uri, name, version)
    except BundleUnloadable as exc:
        raise RegistryError(f"{exc}: nothing changed") from exc
    with promotion_lock(lock_path):
        replaced = aliases(client, name).get(CHAMPION)
        if replaced == int(version):
            raise AlreadyChampion(f"{name} version {version} is already the champion: nothing changed")
        moves = {CHAMPION: version} if replaced is None else {PREVIOUS_CHAMPION: replaced, CHAMPION: version}
        move_aliases(client, name, moves)
        set_version_tags(client, VersionRef(name, int(version), None, {}), {
            TAG_MANUAL_PROMOTED_BY: who, TAG_MANUAL_PROMOTED_AT: _utc_now(), TAG_MANUAL_REASON: reason or "",
            TAG_MANUAL_REPLACED: "" if replaced is None else str(replaced)})
    return replaced
