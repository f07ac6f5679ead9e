"""Carrying the champion from one MLflow store to another (`python -m pipelines registry copy-champion --from
URI`): the move from the embedded sqlite store to a tracking server (docs/deploy.md).

Each of the source's ``champion`` and ``previous_champion`` becomes a new version of the same model name in the
target, registered as the pipeline registers one (`registration.register_bundle`: the bundle's arrays and JSON,
the smoke test), in a run of its own that carries the source run's params, metric histories, tags and start
time; the version keeps its tags (kind, eval and gate scores, weighting, ...) plus `copied_from.*` saying
where it came from. Then the target's aliases point at the copies. The gate re-scores a champion's bundle on
each challenger's holdout, so the first retrain against the target gates against the carried champion.

Tags that hold a version number of the source (which version a gate compared with, the ALS version a
popularity model was counted for, ...) mean another version in the target: they are rewritten to the copy's
number where that version was copied too, and kept under `copied_from.<tag>` otherwise, so no tag of the
target names a version it does not mean (a popularity champion's `popularity_of_version` decides whether a
challenger is that champion already).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse, urlunparse

from als_store.mlflow_store import (RegistryError, check_reachable, make_client, mlflow_errors, quoted,
                                    sqlite_path, validate_tracking_uri)
from als_store.model_registry import aliases, download_bundle, get_version
from als_store.model_tags import (CHAMPION, PREVIOUS_CHAMPION, TAG_EVAL_CHAMPION_VERSION, TAG_GATE_ALS_VERSION,
                                  TAG_GATE_CHAMPION_VERSION, TAG_GATE_POPULARITY_VERSION, TAG_MANUAL_REPLACED,
                                  TAG_POPULARITY_OF)
from pipelines.registry import run_log
from pipelines.registry.promotion import move_aliases, promotion_lock
from pipelines.registry.registration import register_bundle, set_version_tags

if TYPE_CHECKING:
    from mlflow import MlflowClient

TAG_COPIED_FROM_PREFIX = "copied_from."
TAG_COPIED_FROM_URI = f"{TAG_COPIED_FROM_PREFIX}tracking_uri"  # the source store, credentials left out
TAG_COPIED_FROM_VERSION = f"{TAG_COPIED_FROM_PREFIX}version"
TAG_COPIED_FROM_RUN_ID = f"{TAG_COPIED_FROM_PREFIX}run_id"  # the source version's run: what makes a copy the same
# version tags whose value is a version number of the model
VERSION_NUMBER_TAGS = (TAG_POPULARITY_OF, TAG_GATE_CHAMPION_VERSION, TAG_GATE_POPULARITY_VERSION, TAG_GATE_ALS_VERSION,
                       TAG_EVAL_CHAMPION_VERSION, TAG_MANUAL_REPLACED)
# MLflow's own run tags (user, source file, ...) describe the run that writes them; the description is ours
_KEPT_SYSTEM_RUN_TAGS = ("mlflow.note.content",)


@dataclass(frozen=True)
class Copied:
    """One source version and its copy in the target; ``new``: this call registered it."""

    alias: str
    source_version: int
    target_version: int
    new: bool


@dataclass(frozen=True)
class Transfer:
    """What `copy_champion` did: ``copied`` per alias (champion first); ``aliases_moved``: the target's aliases
    changed."""

    model_name: str
    source: str
    target: str
    copied: tuple[Copied, ...]
    aliases_moved: bool

    def lines(self) -> list[str]:
        if not self.aliases_moved and not any(c.new for c in self.copied):
            [champion] = [c for c in self.copied if c.alias == CHAMPION]
            return [f"{self.model_name}: nothing to copy: champion v{champion.target_version} at {self.target} is "
                    f"the copy of v{champion.source_version} from {self.source}"]
        out = []
        for c in self.copied:
            done = "copied" if c.new else "already copied:"
            out.append(f"{self.model_name}: {done} {c.alias} v{c.source_version} from {self.source} -> "
                       f"v{c.target_version} at {self.target}")
        if self.aliases_moved:
            moved = ", ".join(f"{c.alias} -> v{c.target_version}" for c in self.copied)
            out.append(f"{self.model_name}: aliases at {self.target}: {moved}")
        return out


class TargetHasChampion(RegistryError):
    """The target has a champion of its own: copying over it needs --force."""


def without_credentials(uri: str) -> str:
    """``uri`` as a tag may show it: no user, password or query string (a database URL may carry them)."""
    parsed = urlparse(uri)
    if "@" not in parsed.netloc and not parsed.query:
        return uri
    netloc = parsed.netloc.rpartition("@")[2]
    return urlunparse(parsed._replace(netloc=netloc, query=""))


def copies_of(client: MlflowClient, name: str, source_versions: Mapping[int, str | None]) -> dict[int, int]:
    """``{source version: target version}`` for the versions of ``source_versions`` ({version: run id}) that
    the target holds a copy of already (the newest copy when there are several)."""
    found: dict[int, int] = {}
    for version, run_id in source_versions.items():
        condition = (f"tags.`{TAG_COPIED_FROM_RUN_ID}` = '{quoted(run_id)}'" if run_id
                     else f"tags.`{TAG_COPIED_FROM_VERSION}` = '{int(version)}'")
        with mlflow_errors(f"looking for copies of {name} version {version}"):
            hits = [mv for mv in client.search_model_versions(f"name = '{quoted(name)}' AND {condition}")
                    if (mv.tags or {}).get(TAG_COPIED_FROM_VERSION) == str(int(version))]
        if hits:
            found[int(version)] = max(int(mv.version) for mv in hits)
    return found


def _mapped_version_tags(tags: Mapping[str, str], mapping: Mapping[int, int]) -> tuple[dict[str, str], list[str]]:
    """The version-number tags of ``tags`` rewritten with ``mapping`` (source -> target version), or moved under
    `copied_from.` where the version they name was not copied; returns (tags to set, tags to delete)."""
    out, dropped = {}, []
    for key in VERSION_NUMBER_TAGS:
        value = (tags.get(key) or "").strip()
        if not value:
            continue
        if value.isdigit() and int(value) in mapping:
            out[key] = str(mapping[int(value)])
        else:
            out[f"{TAG_COPIED_FROM_PREFIX}{key}"] = value
            dropped.append(key)
    return out, dropped


def _copy_run(source: MlflowClient, target: MlflowClient, run_id: str | None, artifact_root: Path | None,
              extra_tags: Mapping[str, str]) -> str:
    """A finished run in the target with the source run's name, start time, params, metric histories and tags
    (in the experiment of the same name), plus ``extra_tags``; returns its id."""
    from mlflow.entities import Metric, Param

    run = None
    if run_id:
        with mlflow_errors(f"reading source run {run_id}"):
            run = source.get_run(run_id)
    experiment_name = run_log.DEFAULT_EXPERIMENT
    if run is not None:
        with mlflow_errors(f"reading the experiment of source run {run_id}"):
            experiment_name = source.get_experiment(run.info.experiment_id).name
    experiment_id = run_log.ensure_experiment(target, experiment_name, artifact_root)
    tags = {} if run is None else {key: value for key, value in run.data.tags.items()
                                   if not key.startswith("mlflow.") or key in _KEPT_SYSTEM_RUN_TAGS}
    with mlflow_errors("creating the copy's run"):
        created = target.create_run(experiment_id, start_time=None if run is None else run.info.start_time,
                                    tags={**tags, **extra_tags},
                                    run_name=None if run is None else run.info.run_name)
    new_run_id = created.info.run_id
    try:
        if run is not None:
            metrics = []
            with mlflow_errors(f"reading the metrics of source run {run_id}"):
                for key in run.data.metrics:
                    metrics += [Metric(m.key, m.value, m.timestamp, m.step)
                                for m in source.get_metric_history(run_id, key)]
            params = [Param(key, value) for key, value in run.data.params.items()]
            with mlflow_errors("logging the copy's params and metrics"):
                if params:
                    target.log_batch(new_run_id, params=params)
                for start in range(0, len(metrics), 1000):  # log_batch takes at most 1000 metrics per request
                    target.log_batch(new_run_id, metrics=metrics[start:start + 1000])
    except BaseException:
        with contextlib.suppress(Exception):
            run_log.finish_run(target, new_run_id, failed=True)
        raise
    return new_run_id


def _copy_version(source_uri: str, target_uri: str, name: str, version: int, artifact_root: Path | None) -> int:
    """Register ``version`` of the source as a new version in the target; returns its number. Its
    version-number tags are left out here (`copy_champion` sets them once every copy has its number)."""
    from als_core.bundle import ModelBundle

    source, target = make_client(source_uri), make_client(target_uri)
    ref = get_version(source, name, version)
    origin = {TAG_COPIED_FROM_URI: without_credentials(source_uri), TAG_COPIED_FROM_VERSION: str(ref.version),
              TAG_COPIED_FROM_RUN_ID: ref.run_id or ""}
    tags = {key: value for key, value in ref.tags.items() if key not in VERSION_NUMBER_TAGS}
    run_id = _copy_run(source, target, ref.run_id, artifact_root, origin)
    try:
        with tempfile.TemporaryDirectory(prefix="copy-champion-") as tmp:
            bundle_dir = download_bundle(source_uri, name, ref.version, Path(tmp))
            bundle = ModelBundle.load(bundle_dir)
            copied = register_bundle(target_uri, run_id, name, bundle_dir, bundle.user_ids[:2], {**tags, **origin})
    except BaseException:
        with contextlib.suppress(Exception):
            run_log.finish_run(target, run_id, failed=True)
        raise
    run_log.finish_run(target, run_id)
    with mlflow_errors(f"reading the description of {name} version {version}"):
        description = source.get_model_version(name, str(ref.version)).description
    if description:
        with mlflow_errors(f"describing {name} version {copied.version}"):
            target.update_model_version(name, str(copied.version), description=description)
    return copied.version


def copy_champion(source_uri: str, target_uri: str, name: str, lock, force: bool = False,
                  artifact_root: Path | None = None) -> Transfer:
    """Copy ``champion`` (and ``previous_champion`` if set) of ``name`` from the store at ``source_uri`` into
    the one at ``target_uri`` and point the target's aliases at the copies.

    Nothing is written when the source has no champion, or when the target has a champion that is not the
    copy of the source's (TargetHasChampion) unless ``force``: then the target's champion becomes
    ``previous_champion`` where the source has none. A version copied before (same source run and version) is
    not copied again, and a target whose champion is the copy already is left as it is. ``lock``: the target's
    promotion lock (as `promotion.rollback` takes it), held while the aliases move. ``artifact_root``: where a
    local (sqlite) target keeps a new experiment's artifacts."""
    try:
        validate_tracking_uri(source_uri)
    except ValueError as exc:
        raise RegistryError(f"--from: {exc}") from exc
    if without_credentials(source_uri) == without_credentials(target_uri):
        raise RegistryError(f"--from names the store MLFLOW_TRACKING_URI names ({without_credentials(target_uri)}): "
                            f"nothing to copy")
    source_db = sqlite_path(source_uri)
    if source_db is not None and not source_db.is_file():  # opening it would create an empty store
        raise RegistryError(f"no MLflow store at {source_db}: nothing copied")
    check_reachable(source_uri)
    check_reachable(target_uri)
    source, target = make_client(source_uri), make_client(target_uri)
    wanted = {alias: version for alias, version in aliases(source, name).items()
              if alias in (CHAMPION, PREVIOUS_CHAMPION)}
    if CHAMPION not in wanted:
        raise RegistryError(f"model {name!r} has no `{CHAMPION}` at {without_credentials(source_uri)}: nothing copied")
    if wanted.get(PREVIOUS_CHAMPION) == wanted[CHAMPION]:
        del wanted[PREVIOUS_CHAMPION]
    run_ids = {version: get_version(source, name, version).run_id for version in wanted.values()}
    existing = copies_of(target, name, run_ids)
    current = aliases(target, name)
    if current.get(CHAMPION) is not None:
        if current[CHAMPION] == existing.get(wanted[CHAMPION]):
            return _transfer(name, source_uri, target_uri, wanted, existing, set(), False)
        if not force:
            raise TargetHasChampion(
                f"model {name!r} has a champion at {without_credentials(target_uri)} already (v{current[CHAMPION]}, "
                f"not a copy of v{wanted[CHAMPION]} from {without_credentials(source_uri)}): nothing copied; --force "
                f"copies and makes the copy the champion")
    mapping = dict(existing)
    new: set[int] = set()
    for alias in (PREVIOUS_CHAMPION, CHAMPION):  # in the source's order: the copies' numbers keep it
        version = wanted.get(alias)
        if version is not None and version not in mapping:
            mapping[version] = _copy_version(source_uri, target_uri, name, version, artifact_root)
            new.add(version)
    for version in new:
        tags, dropped = _mapped_version_tags(get_version(source, name, version).tags, mapping)
        with mlflow_errors(f"tagging {name} version {mapping[version]}"):
            ref = get_version(target, name, mapping[version])
            set_version_tags(target, ref, tags)
            for key in dropped:  # register_bundle was given none of them; a tag set by hand since goes too
                if key in ref.tags:
                    target.delete_model_version_tag(name, str(mapping[version]), key)
    with promotion_lock(lock):
        current = aliases(target, name)
        moves = {}
        if PREVIOUS_CHAMPION in wanted:
            moves[PREVIOUS_CHAMPION] = mapping[wanted[PREVIOUS_CHAMPION]]
        elif current.get(CHAMPION) not in (None, mapping[wanted[CHAMPION]]):
            moves[PREVIOUS_CHAMPION] = current[CHAMPION]  # --force: `registry rollback` undoes it
        moves[CHAMPION] = mapping[wanted[CHAMPION]]
        moves = {alias: version for alias, version in moves.items() if current.get(alias) != version}
        if moves:
            move_aliases(target, name, moves)
    return _transfer(name, source_uri, target_uri, wanted, mapping, new, bool(moves))


def _transfer(name: str, source_uri: str, target_uri: str, wanted: Mapping[str, int], mapping: Mapping[int, int],
              new: set[int], moved: bool) -> Transfer:
    copied = tuple(Copied(alias, wanted[alias], mapping[wanted[alias]], wanted[alias] in new)
                   for alias in (CHAMPION, PREVIOUS_CHAMPION) if wanted.get(alias) in mapping)
    return Transfer(name, without_credentials(source_uri), without_credentials(target_uri), copied, moved)
