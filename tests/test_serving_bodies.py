"""Bodies the API will not serve, sent to the app under a real uvicorn server on 127.0.0.1: invalid ones get a
short 4xx that names the field and never echoes the input (non-finite numbers, lone surrogates, junk bytes
included), bodies over the size limit get 413 before they are parsed, and no body gives a 5xx."""

from __future__ import annotations

import contextlib
import select
import socket
import time

import httpx
import pytest

from serving.config import ServingConfig
from test_serving_api import serving
from test_serving_scoring import random_bundle

MAX_ANSWER = 4096  # bytes: at most MAX_ERRORS errors of short loc/msg


@pytest.fixture(scope="module")
def api(tmp_path_factory):
    root = tmp_path_factory.mktemp("bodies")
    random_bundle(40, 50, 4, 0.1, seed=5).save(root / "bundle")
    config = ServingConfig(model_name="bodies", tracking_uri=f"sqlite:///{root / 'unused.db'}",
                           duckdb_path=root / "warehouse.duckdb", bundle_dir=root / "bundle", poll_seconds=60,
                           max_n=30, max_batch=1000, fold_in=False)
    with serving(config) as client:
        deadline = time.monotonic() + 30
        while client.get("/ready").status_code != 200:
            assert time.monotonic() < deadline, client.get("/ready").json()
            time.sleep(0.05)
        yield client


def post_batch(api: httpx.Client, content: bytes | str, content_type: str = "application/json") -> httpx.Response:
    # a new connection each time: a server error closes the connection it happened on
    return httpx.post(f"{api.base_url}/recommendations/batch", content=content,
                      headers={"content-type": content_type}, timeout=30)


def assert_short_422(response: httpx.Response, loc_prefix: list) -> None:
    assert response.status_code == 422, (response.status_code, response.text[:300])
    assert len(response.content) <= MAX_ANSWER, len(response.content)
    errors = response.json()["detail"]
    assert errors and all(set(e) == {"loc", "msg", "type"} for e in errors), errors
    assert any(e["loc"][:len(loc_prefix)] == loc_prefix for e in errors), errors


@pytest.mark.parametrize(("body", "field"), [
    ('{"user_ids": [NaN]}', ["body", "user_ids", 0]),
    ('{"user_ids": [-Infinity]}', ["body", "user_ids", 0]),
    ('{"user_ids": [1e400]}', ["body", "user_ids", 0]),
    ('{"user_ids": [3], "n": Infinity}', ["body", "n"]),
    ('{"user_ids": [3], "n": NaN}', ["body", "n"]),
    ('{"user_ids": [3], "n": 1e400}', ["body", "n"]),
    ('{"user_ids": ["\\ud800"]}', ["body", "user_ids", 0]),      # a lone surrogate: not text that can be an id
    ('{"user_ids": [3], "\\udfff": 1}', ["body"]),                 # ... as a field name
    ('"\\ud800"', ["body"]),
    ('{"user_ids": [{"a": {"b": [1.5]}}]}', ["body", "user_ids", 0]),
    ('{"user_ids": [3]', ["body"]),                              # cut short
])
def test_a_bad_json_body_gets_a_short_422_naming_the_field(api, body, field):
    assert_short_422(post_batch(api, body), field)


def test_a_large_bad_body_is_not_echoed(api):
    """Under the body limit, but large: the answer stays short however big the rejected value."""
    huge_id = "a" * 600_000
    response = post_batch(api, '{"user_ids": ["%s"]}' % huge_id)
    assert_short_422(response, ["body", "user_ids", 0])
    assert huge_id[:1000] not in response.text
    junk = post_batch(api, '{"user_ids": [%s]}' % ",".join(["[]"] * 50_000))
    assert_short_422(junk, ["body", "user_ids"])
    assert len(junk.json()["detail"]) <= 10


@pytest.mark.parametrize(("content", "content_type", "why"), [
    (b'{"user_ids": ["\xff\xfe"]}', "application/json", "utf-8"),          # not UTF-8
    (b'{"user_ids": [' + b"9" * 5000 + b"]}", "application/json", "digits"),  # past Python's int-digit limit
    (b"[" * 100_000 + b"]" * 100_000, "application/json", "recursion"),     # nesting past the recursion limit
    (b"\xff\x00 not json", "text/plain", "dictionary"),                    # not JSON: not an object either
])
def test_undecodable_bodies_get_a_short_422_that_says_why(api, content, content_type, why):
    response = post_batch(api, content, content_type)
    assert_short_422(response, ["body"])
    assert why in response.json()["detail"][0]["msg"]


def test_what_the_document_allows_is_served(api):
    """Found by the Schemathesis run: JSON Schema's "integer" includes 5.0, and OPTIONS on the batch route must
    advertise the method the document lists."""
    whole = post_batch(api, '{"user_ids": [3.0, 10, "10"], "n": 5.0}')
    assert whole.status_code == 200, whole.text[:300]
    assert [r["user_id"] for r in whole.json()["results"]] == [3, 10, "10"]
    assert all(len(r["recommendations"]) == 5 for r in whole.json()["results"])
    assert_short_422(post_batch(api, '{"user_ids": [3.5]}'), ["body", "user_ids", 0])
    assert_short_422(post_batch(api, '{"user_ids": [3], "n": 5.5}'), ["body", "n"])
    assert_short_422(post_batch(api, '{"user_ids": [9223372036854775808.0]}'), ["body", "user_ids", 0])
    options = api.options("/recommendations/batch")
    assert options.status_code == 405 and options.headers["allow"] == "POST"
    assert api.get("/recommendations/batch").json()["user_id"] == "batch"  # a user may be called that


def test_the_body_limit_is_a_serving_setting():
    assert ServingConfig.from_env({}).max_body_bytes == 1 << 20
    assert ServingConfig.from_env({"ALS_SERVING_MAX_BODY_BYTES": "4096"}).max_body_bytes == 4096
    with pytest.raises(ValueError, match="ALS_SERVING_MAX_BODY_BYTES"):
        ServingConfig.from_env({"ALS_SERVING_MAX_BODY_BYTES": "1MB"})


def raw_post(port: int, headers: bytes, chunks, max_sent: int) -> tuple[int, bytes]:
    """Send ``headers`` then ``chunks`` until the server answers (or ``max_sent`` bytes went out); returns the
    bytes sent and the answer's head. A plain socket, so nothing waits for the body to end before reading."""
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(headers)
        for chunk in chunks:
            if sent >= max_sent or select.select([sock], [], [], 0.005)[0]:
                break
            try:
                sock.sendall(chunk)
            except OSError:  # the server answered and closed meanwhile
                break
            sent += len(chunk)
        with contextlib.suppress(OSError):
            while b"\r\n\r\n" not in answer and (data := sock.recv(65536)):
                answer += data
    return sent, answer


def test_a_body_over_the_limit_gets_413_before_it_is_read(api):
    """Default limit, 1 MiB: a body of exactly 1 MiB is served; one byte more gets 413, whether the size is
    declared (Content-Length: refused before any of the body is sent) or streamed in chunks (cut off)."""
    limit = 1 << 20
    head = b'{"user_ids": [3]}'
    assert post_batch(api, head + b" " * (limit - len(head))).status_code == 200
    over = post_batch(api, head + b" " * (limit + 1 - len(head)))
    assert over.status_code == 413, over.text[:300]
    assert "ALS_SERVING_MAX_BODY_BYTES" in over.json()["detail"]

    port = api.base_url.port
    request = b"POST /recommendations/batch HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
    started = time.monotonic()
    sent, answer = raw_post(port, request + b"content-length: %d\r\n\r\n" % (100 << 20), [], 0)
    assert answer.startswith(b"HTTP/1.1 413"), answer  # with none of the 100 MB sent
    assert time.monotonic() - started < 5

    piece = b" " * 65536
    chunked = (b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(1000))
    sent, answer = raw_post(port, request + b"transfer-encoding: chunked\r\n\r\n", chunked, max_sent=16 << 20)
    assert answer.startswith(b"HTTP/1.1 413"), (sent, answer)
    assert sent < 4 * limit, sent  # cut off near the limit, not read to the end
    assert api.get("/health").status_code == 200
