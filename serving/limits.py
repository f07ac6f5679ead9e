"""What the API does with bodies it will not serve: invalid ones get a short 422 that names the fields, never
the input back."""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError

MAX_ERRORS = 10  # a 1,000-id batch of junk would otherwise list 2,000 errors
MAX_TEXT = 200
MAX_LOC = 8


def _short(part) -> str | int:
    if isinstance(part, int) and not isinstance(part, bool):
        return part
    # a lone surrogate from a JSON escape ("\ud800") cannot be encoded in the UTF-8 answer: escape it
    text = str(part).encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= MAX_TEXT else text[:MAX_TEXT] + "..."


def validation_errors(exc: RequestValidationError) -> list[dict]:
    """FastAPI's 422 `detail` (loc, msg, type per error, the documented `ValidationError` schema) without the
    `input` and `ctx` it would echo: the input can be the whole body (megabytes), or a NaN, an infinity or a
    lone surrogate that cannot be written as JSON at all."""
    errors = []
    for error in exc.errors()[:MAX_ERRORS]:
        msg = error.get("msg", "")
        ctx = error.get("ctx") or {}
        if error.get("type") == "json_invalid" and isinstance(ctx.get("error"), str):
            msg = f"{msg}: {ctx['error']}"
        errors.append({"loc": [_short(part) for part in tuple(error.get("loc", ()))[:MAX_LOC]],
                       "msg": _short(msg), "type": _short(error.get("type", ""))})
    return errors
