"""`python -m pipelines <command>`: the operator's commands.

    python -m pipelines status     # champion, last retrains, last ingest per day, stuck runs
    python -m pipelines recover    # fail runs whose process is gone, free their pool slots

Each command lives in its own module with a `main(argv) -> int`; add one to COMMANDS to add a command.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "status": ("pipelines.status", "champion, last retrains and last ingest per day"),
    "registry": ("pipelines.registry.cli", "the aliases and newest versions, roll back, promote by hand "
                                           "(show | rollback | promote VERSION [--reason TEXT] | "
                                           "copy-champion --from URI [--force])"),
    "recover": ("pipelines.recovery", "fail runs whose process is gone and free the pool slots they hold"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help") or args[0] not in COMMANDS:
        lines = ["usage: python -m pipelines <command> [options]", "", "commands:"]
        lines += [f"  {name:<10} {summary}" for name, (_, summary) in COMMANDS.items()]
        print("\n".join(lines), file=sys.stdout if args[:1] in (["-h"], ["--help"]) else sys.stderr)
        return 0 if args[:1] in (["-h"], ["--help"]) else 2
    module, _ = COMMANDS[args[0]]
    return importlib.import_module(module).main(args[1:])


if __name__ == "__main__":
    sys.exit(main())
