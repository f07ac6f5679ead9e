"""Run the SQL kept in `als_store/sql/*.sql`: every statement is a file, values are bound, never formatted
in. The files are package data, so an installed wheel has them.

DuckDB binds parameters only for the last statement of a multi-statement string, so a file with
several statements is split on semicolons that end a line and each runs with the parameters it
names (`$name`). Keep semicolons inside string literals off line ends.
"""

from __future__ import annotations

import functools
import importlib.resources
import re
from collections.abc import Mapping
from typing import Any

import duckdb

SQL_DIR = importlib.resources.files(__package__) / "sql"
_STATEMENT_END = re.compile(r";[ \t]*(?:--[^\n]*)?$", re.MULTILINE)
_PARAMETER = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)")


@functools.cache
def statements(name: str) -> tuple[str, ...]:
    """The statements of `als_store/sql/<name>.sql`, comments kept, empty ones dropped."""
    text = (SQL_DIR / f"{name}.sql").read_text(encoding="utf-8")
    parts = (part.strip() for part in _STATEMENT_END.split(text))
    return tuple(part for part in parts if _has_code(part))


def _has_code(sql: str) -> bool:
    return any(line.strip() and not line.strip().startswith("--") for line in sql.splitlines())


def run(con: duckdb.DuckDBPyConnection, name: str, params: Mapping[str, Any] | None = None):
    """Execute every statement of `als_store/sql/<name>.sql`; returns the connection after the last one,
    so `run(...).fetchall()` reads the last statement's result."""
    params = dict(params or {})
    result = con
    for sql in statements(name):
        wanted = set(_PARAMETER.findall(_strip_comments(sql)))
        missing = wanted - params.keys()
        if missing:
            raise KeyError(f"sql/{name}.sql needs parameters {sorted(missing)}")
        result = con.execute(sql, {key: params[key] for key in wanted} if wanted else None)
    return result


def _strip_comments(sql: str) -> str:
    return "\n".join(line.split("--", 1)[0] for line in sql.splitlines())
