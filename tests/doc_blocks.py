"""The shell blocks of README.md and docs/*.md, each with the marker that says how the doc tests treat it.

A marker is an HTML comment on the line just above the block's opening fence (invisible when rendered):

    <!-- doc-test: run -->                    run as written, in order with the document's other blocks
    <!-- doc-test: serve URL [URL ...] -->    each line starts a server: wait until URL answers, then Ctrl-C it
    <!-- doc-test: skip: REASON -->           not run; the reason says why (and what covers it instead)

Every shell block needs one, so a new block cannot silently go untested.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHELL_FENCE = re.compile(r"^```(bash|sh|shell|console)\s*$")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(run|serve|skip)\b:?\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class ShellBlock:
    doc: str  # path relative to the project root
    line: int  # 1-based line of the opening fence
    mode: str | None  # run | serve | skip, None when the marker is missing
    argument: str  # the URLs of `serve`, the reason of `skip`
    text: str

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def commands(self) -> list[str]:
        """The block's commands: lines joined where they end in a backslash, empty and comment lines left out."""
        joined = self.text.replace("\\\n", " ")
        return [line for line in joined.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def documents() -> list[str]:
    return ["README.md", *sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "docs").glob("*.md"))]


def shell_blocks(doc: str) -> list[ShellBlock]:
    lines = (ROOT / doc).read_text().splitlines()
    blocks, index = [], 0
    while index < len(lines):
        if SHELL_FENCE.match(lines[index]):
            start = index
            end = next(j for j in range(start + 1, len(lines)) if lines[j].startswith("```"))
            previous = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
            marker = MARKER.match(previous.strip())
            blocks.append(ShellBlock(doc, start + 1, marker.group(1) if marker else None,
                                     marker.group(2) if marker else "", "\n".join(lines[start + 1:end])))
            index = end + 1
        else:
            index += 1
    return blocks
