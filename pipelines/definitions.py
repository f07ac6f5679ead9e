"""The code location: `dagster dev -w workspace.yaml` (make ui), `dagster asset materialize -m pipelines.definitions`,
and `dg check defs` / `dg list defs` / `dg dev` through the [tool.dg] project in pyproject.toml.

`dg.load_from_defs_folder` imports every module under `pipelines/defs/` and takes its definitions: the
module's `@dg.definitions` function where it has one (resources.py, ingest.py, automation.py build what
depends on the environment there, when the definitions load), else its module-level assets, checks and jobs.
"""

from pathlib import Path

import dagster as dg

from pipelines.defs.resources import PipelineSettings, build_resources


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)


def defs_at(pipeline: PipelineSettings) -> dg.Definitions:
    """The same definitions with every resource at `pipeline`'s paths instead of the environment's (tests,
    scripts that run jobs in-process)."""
    loaded = defs()
    return dg.Definitions(assets=loaded.assets, asset_checks=loaded.asset_checks, jobs=loaded.jobs,
                          schedules=loaded.schedules, sensors=loaded.sensors, executor=loaded.executor,
                          loggers=loaded.loggers, metadata=loaded.metadata, resources=build_resources(pipeline))
