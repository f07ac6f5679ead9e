"""A benchmark's verdicts: each target judged prints `ok` or `MISS`, and the script exits 1 when any missed."""

from __future__ import annotations


class Targets:
    def __init__(self) -> None:
        self.missed: list[str] = []

    def verdict(self, met: bool, name: str) -> str:
        """`ok` or `MISS` for one target; a miss is remembered for the exit status."""
        if not met:
            self.missed.append(name)
        return "ok" if met else "MISS"

    def exit_status(self) -> int:
        if self.missed:
            print(f"\nmissed: {', '.join(self.missed)}")
            return 1
        return 0
