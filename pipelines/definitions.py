"""The Dagster code location loaded by workspace.yaml (`dagster dev`, `dagster asset materialize -m pipelines.definitions`).

Every module under `pipelines/defs/` is imported and its module-level assets, asset checks, jobs,
schedules and sensors are collected, so a new module (e.g. `model_assets.py`) joins without an
edit here. `dg.load_from_defs_folder` would do the same but needs a `[tool.dg]` project table in
pyproject.toml; the resources come from `pipelines/defs/resources.py`.
"""

import importlib
import pkgutil
from collections.abc import Iterable
from types import ModuleType

import dagster as dg

import pipelines.defs
from pipelines.defs import automation
from pipelines.defs.resources import build_resources

# define_asset_job and build_schedule_from_partitioned_job return not-yet-resolved types that
# dagster does not export by name
_JOB_TYPES = (dg.JobDefinition, type(automation.ingest_job))
_SCHEDULE_TYPES = (dg.ScheduleDefinition, type(automation.ingest_schedule))


def defs_modules() -> list[ModuleType]:
    return [
        importlib.import_module(f"{pipelines.defs.__name__}.{info.name}")
        for info in pkgutil.iter_modules(pipelines.defs.__path__)
        if not info.name.startswith("_")
    ]


def _module_objects(modules: Iterable[ModuleType], types: tuple[type, ...]) -> list:
    found: dict[int, object] = {}  # by identity: an object imported by several modules counts once
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, types):
                found.setdefault(id(value), value)
    return list(found.values())


@dg.definitions
def defs() -> dg.Definitions:
    modules = defs_modules()
    return dg.Definitions(
        assets=dg.load_assets_from_modules(modules),
        asset_checks=dg.load_asset_checks_from_modules(modules),
        jobs=_module_objects(modules, _JOB_TYPES),
        schedules=_module_objects(modules, _SCHEDULE_TYPES),
        sensors=_module_objects(modules, (dg.SensorDefinition,)),
        resources=build_resources(),
    )
