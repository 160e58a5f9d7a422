"""GET /openapi.json describes every endpoint, and generated requests (odd methods, paths,
headers, content types, bodies with lone surrogates and deep nesting) never get a 5xx or leave
a traceback in the log, against a real server and a loopback upstream (issue 7, item 4)."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator

import httpx
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from switchllm.serving import build_config, create_app
from switchllm.serving import server as server_module
from switchllm.serving.openapi import OPENAPI
from tests.serving_fixtures import FakeUpstream, ServerThread


class Problems(logging.Handler):
    """Every log record at ERROR or above, or carrying a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.records.append(record)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory
           ) -> Iterator[tuple[ServerThread, FakeUpstream, Problems]]:
    upstream = FakeUpstream(record=False).start()
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url,
        overrides={"log_path": str(tmp_path_factory.mktemp("log") / "d.sqlite"), "retries": 0},
    )
    thread = ServerThread(create_app(config)).start()
    problems = Problems()
    loggers = [logging.getLogger(), logging.getLogger("uvicorn"), logging.getLogger("asyncio")]
    for logger in loggers:
        logger.addHandler(problems)
    yield thread, upstream, problems
    for logger in loggers:
        logger.removeHandler(problems)
    thread.stop()
    upstream.stop()


def served_paths(app: server_module.SwitchServer) -> set[str]:
    """Every path the server's router answers (so a new endpoint without a schema entry fails
    here), in the document's spelling of the model parameter."""
    return {path.replace("{model_id:path}", "{model}") for path in app.paths}


def test_every_served_path_is_described(
    served: tuple[ServerThread, FakeUpstream, Problems]
) -> None:
    thread, _, _ = served
    document = httpx.get(thread.url + "/openapi.json").json()
    assert document == json.loads(json.dumps(OPENAPI))
    assert document["openapi"].startswith("3.1")
    paths = served_paths(thread.app)
    assert {"/v1/chat/completions", "/health", "/v1/models/{model}", "/openapi.json"} <= paths
    assert paths <= set(document["paths"]), paths - set(document["paths"])
    # and every described path is answered (not 404) by the method it documents
    for path, item in document["paths"].items():
        for method in item:
            if method == "parameters":
                continue
            url = thread.url + path.replace("{model}", "weak")
            response = httpx.request(method.upper(), url, json={} if method == "post" else None)
            assert response.status_code != 404 or "model" in path, (method, path)
            assert response.status_code < 500


# ---- fuzzing ----------------------------------------------------------------------------------
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=12)  # surrogates too
SCALARS = (st.none() | st.booleans() | st.integers(-2**70, 2**70)
           | st.floats(allow_nan=False, allow_infinity=False) | ANY_TEXT)
JSON = st.recursive(SCALARS, lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(ANY_TEXT, inner, max_size=4), max_leaves=12)
MODELS = st.sampled_from(["weak", "strong", "router-random-0.5", "router-random-s0.3",
                          "router-random-2", "router-nope-0.5", "router-", "auto", ""]) | ANY_TEXT
MESSAGE = st.fixed_dictionaries({"role": st.sampled_from(["user", "system", "assistant"]) | JSON},
                                optional={"content": JSON | ANY_TEXT})
CHAT = st.fixed_dictionaries(
    {"model": MODELS | JSON, "messages": st.lists(MESSAGE | JSON, max_size=3) | JSON},
    optional={"stream": st.booleans() | JSON, "max_tokens": JSON, "temperature": JSON,
              "input": JSON | ANY_TEXT, "prompt": JSON | ANY_TEXT, "request_id": JSON,
              "rating": JSON, "winner": JSON, "stream_options": JSON})


VALID_CHAT = st.builds(
    lambda model, text, stream, extra: {**extra, "model": model, "stream": stream,
                                        "messages": [{"role": "user", "content": text}]},
    st.sampled_from(["weak", "strong", "router-random-0.5", "router-random-s0.3"]), ANY_TEXT,
    st.booleans(), st.dictionaries(ANY_TEXT, JSON, max_size=3))


def encode(value: object) -> bytes:
    # json.dumps escapes lone surrogates as \udXXX, which is valid JSON
    return json.dumps(value).encode()


BODIES = st.one_of(
    VALID_CHAT.map(encode),
    CHAT.map(encode),
    JSON.map(encode),
    st.integers(1, 3000).map(lambda n: b'{"model": "weak", "x": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(1, 3000).map(lambda n: b'{"a":' * n + b"1" + b"}" * n),
    st.binary(max_size=64),
    st.sampled_from([b"", b"{", b'{"model": NaN}', b'{"temperature": Infinity}', b"\xff\xfe",
                     b'{"model": "weak", "messages": [{"role": "user", "content": "\\ud800"}]}',
                     b'"\\udc00"', b"[]", b"null", b"1e999999"]),
)
PATHS = st.sampled_from(sorted(OPENAPI["paths"])).map(
    lambda p: p.replace("{model}", "weak")) | st.sampled_from(
    ["/", "/v2/chat/completions", "/v1/models/", "/v1/models/%ED%A0%80", "/health/", "//health",
     "/v1/chat/completions/../health", "/%00", "/v1/models/router-random-0.5"])
CONTENT_TYPES = st.sampled_from([
    "application/json", "application/json; charset=utf-8", "APPLICATION/JSON", "text/plain",
    "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "", "json",
    "application/json;;;", "application/json\x7f"])
HOSTS = st.sampled_from(["127.0.0.1", "localhost", "evil.example", "127.0.0.1:1", "[::1]", "",
                         "127.0.0.1:notaport", "LOCALHOST", "127.0.0.1\x00"])
METHODS = st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "HEAD", "BREW",
                           "GET / HTTP/1.1"])
AUTH = st.sampled_from([None, "Bearer x", "Basic Zm9vOmJhcg==", "Bearer ", "bearer\tx", "\xff"])
API_PATHS = st.sampled_from(["/v1/chat/completions", "/chat/completions", "/v1/completions",
                             "/v1/responses", "/v1/embeddings", "/v1/feedback"])


@st.composite
def requests(draw: st.DrawFn) -> tuple[str, str, dict[str, str], bytes]:
    """Mostly well-formed POSTs to the API with generated bodies (what gets past the checks on
    method, host and content type and reaches parsing and routing); the rest anything at all."""
    if draw(st.integers(0, 9)) < 7:
        method, path, host = "POST", draw(API_PATHS), "127.0.0.1"
        content_type = draw(st.sampled_from(["application/json",
                                             "application/json; charset=utf-8"]))
        auth = None
    else:
        method, path, host = draw(METHODS), draw(PATHS), draw(HOSTS)
        content_type, auth = draw(CONTENT_TYPES), draw(AUTH)
    headers = {"host": host, "content-type": content_type}
    if auth is not None:
        headers["authorization"] = auth
    return method, path, headers, draw(BODIES)


def exchange(port: int, method: str, path: str, headers: dict[str, str], body: bytes
             ) -> tuple[int, bytes, bytes]:
    """One request on a fresh connection (closed after the answer): status, head and body."""
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(
        f"{name}: {value}\r\n" for name, value in headers.items())
    raw = (head + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode(
        "utf-8", "surrogateescape") + body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(raw)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    status_line, _, rest = answer.partition(b"\r\n")
    response_head, _, response_body = rest.partition(b"\r\n\r\n")
    return int(status_line.split()[1]), response_head.lower(), response_body


DEEP = b'{"model": "weak", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
JSON_POST = {"host": "127.0.0.1", "content-type": "application/json"}


@example(request=("POST", "/v1/feedback", JSON_POST, DEEP))
@example(request=("POST", "/v1/feedback", JSON_POST, b'{"request_id": "\\ud800", "rating": 1}'))
@example(request=("POST", "/v1/embeddings", JSON_POST, DEEP))
@example(request=("POST", "/v1/responses", JSON_POST,
                  b'{"model": "router-random-0.5", "input": [{"role": "user", "content": '
                  b'[{"type": "input_text", "text": "\\udfff"}]}]}'))
@example(request=("POST", "/v1/chat/completions", JSON_POST,
                  b'{"model": "router-random-0.5", "stream": true, "messages": [{"role": '
                  b'"user", "content": "hi"}], "stream_options": {"include_usage": "\\ud800"}}'))
@settings(max_examples=300, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_generated_requests_get_no_5xx_and_leave_no_traceback(
    served: tuple[ServerThread, FakeUpstream, Problems],
    request: tuple[str, str, dict[str, str], bytes],
) -> None:
    thread, _, problems = served
    method, path, headers, body = request
    status, head, payload = exchange(thread.port, method, path, headers, body)
    assert status < 500, (request, payload[:300])
    if status >= 400 and method != "HEAD":  # every error is an OpenAI-style JSON error
        assert b"content-type: application/json" in head, (request, head, payload[:300])
        assert "error" in json.loads(payload), (request, payload[:300])
    assert problems.records == [], [r.getMessage() for r in problems.records]
