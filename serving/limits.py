"""What the API does with bodies it will not serve: too large (413, before any of it is parsed) or invalid (a
short 422 that names the fields, never the input back)."""

from __future__ import annotations

import json

from fastapi.exceptions import RequestValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

MAX_ERRORS = 10  # a 1,000-id batch of junk would otherwise list 2,000 errors
MAX_TEXT = 200
MAX_LOC = 8


class BodyLimit:
    """Answer 413 to a request whose body is over ``max_bytes``, before the app sees any of it.

    A declared Content-Length over the limit is refused before a byte of the body is read. Otherwise the body
    is read here, counting the bytes as they stream in (a chunked body has no Content-Length), and handed to
    the app only once it has ended within the limit; a body that passes the limit is cut off there. Pure ASGI,
    so nothing is buffered beyond ``max_bytes`` and no framework code runs on a refused body."""

    def __init__(self, app: ASGIApp, max_bytes: int, setting: str = "ALS_SERVING_MAX_BODY_BYTES") -> None:
        self.app = app
        self.max_bytes = int(max_bytes)
        self.setting = setting

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_bytes:
            await self._refuse(send)
            return
        messages: list[Message] = []
        total = 0
        while True:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":  # the client went away: let the app see that
                break
            total += len(message.get("body", b""))
            if total > self.max_bytes:
                await self._refuse(send)
                return
            if not message.get("more_body", False):
                break

        async def replay() -> Message:
            return messages.pop(0) if messages else await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, send: Send) -> None:
        body = json.dumps({"detail": f"request body larger than {self.max_bytes} bytes ({self.setting})"}).encode()
        # the rest of the body is never read, so the connection cannot carry another request
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server rejects a malformed length itself; the bytes are counted anyway
    return None


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


def undecodable_body(exc: Exception) -> list[dict] | None:
    """FastAPI answers a JSON body Python cannot decode (bytes that are not UTF-8, an integer past Python's
    4,300-digit limit, nesting past the recursion limit) with a bare 400 raised from the decoder's error. As a
    422 on `body` that says why, every bad body gets the one documented answer."""
    cause = exc.__cause__
    if getattr(exc, "status_code", None) != 400 or not isinstance(cause, (ValueError, RecursionError)):
        return None
    return [{"loc": ["body"], "msg": _short(f"body is not valid JSON: {cause}"), "type": "json_invalid"}]
