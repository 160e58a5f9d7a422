"""What one client connection may hold (issue 7, defect 2): slowloris heads, slow bodies and idle
connections are closed within their timeouts, and connections beyond the cap get a clean 503
instead of exhausting file descriptors. Raw sockets against a real uvicorn on loopback, with
uvicorn's httptools protocol on uvloop and its h11 protocol on asyncio."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from switchllm.serving import ConfigError, build_config, create_app
from switchllm.serving.connections import (
    ConnectionLimits,
    fit_max_connections,
    guarded_protocol,
    limits_of,
    raise_open_files_limit,
)
from tests.serving_fixtures import FakeUpstream, ServerThread

LIMITS = {"header_timeout_s": 0.6, "body_timeout_s": 0.6, "keep_alive_s": 0.6,
          "max_connections": 4}
HEALTH = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


@pytest.fixture(scope="module", params=[(HttpToolsProtocol, "uvloop"), (H11Protocol, "asyncio")],
                ids=["httptools-uvloop", "h11-asyncio"])
def server(request: pytest.FixtureRequest, upstream: FakeUpstream) -> Iterator[ServerThread]:
    base, loop = request.param
    config = build_config(routers={"random": "random"}, strong_model="strong",
                          weak_model="weak", base_url=upstream.base_url,
                          overrides={"log_path": None, **LIMITS})
    thread = ServerThread(create_app(config), loop=loop,
                          http=guarded_protocol(limits_of(config), base)).start()
    yield thread
    thread.stop()


def connect(server: ServerThread) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port))
    sock.settimeout(5)
    return sock


def read_all(sock: socket.socket) -> bytes:
    """Everything until the server closes the connection."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk


_unread: dict[int, bytes] = {}  # per socket: bytes received past the last response read


def read_response(sock: socket.socket) -> tuple[int, dict]:
    data = _unread.pop(sock.fileno(), b"")
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    _unread[sock.fileno()] = body[length:]
    return int(head.split()[1]), json.loads(body[:length])


def test_slowloris_head_is_cut_at_the_header_timeout(server: ServerThread) -> None:
    sock = connect(server)
    started = time.monotonic()
    try:  # one header byte every 0.1 s: never finishes within 0.6 s
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 50:
            sock.send(bytes([byte]))
            time.sleep(0.1)
    except OSError:
        pass  # closed while sending: what we want
    answer = read_all(sock)
    elapsed = time.monotonic() - started
    assert elapsed < 0.6 + 0.5
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code": "header_timeout"' in answer


def test_connection_that_sends_nothing_is_closed(server: ServerThread) -> None:
    sock = connect(server)
    started = time.monotonic()
    assert read_all(sock) == b""  # closed silently: nothing was asked
    assert 0.5 < time.monotonic() - started < 1.2


def test_slow_body_gets_a_408(server: ServerThread, upstream: FakeUpstream) -> None:
    upstream.reset()
    sock = connect(server)
    sock.send(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: application/json\r\nContent-Length: 200\r\n\r\n{\"model\": ")
    started = time.monotonic()
    answer = read_all(sock)
    assert time.monotonic() - started < 1.2
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"code": "body_timeout"' in answer
    assert upstream.seen == []


def test_idle_kept_alive_connection_is_closed_and_busy_one_is_not(server: ServerThread) -> None:
    sock = connect(server)
    for _ in range(3):  # requests spaced under the timeouts keep the connection
        sock.send(HEALTH)
        assert read_response(sock)[0] == 200
        time.sleep(0.3)
    started = time.monotonic()
    assert read_all(sock) == b""
    assert time.monotonic() - started < 1.0


def test_beyond_the_cap_a_new_connection_gets_503_then_service_resumes(
    server: ServerThread
) -> None:
    held = [connect(server) for _ in range(LIMITS["max_connections"])]
    for sock in held:  # each is served: the cap counts them
        sock.send(HEALTH)
        assert read_response(sock)[0] == 200
    extra = connect(server)
    extra.send(HEALTH)
    status, body = read_response(extra)
    assert status == 503
    assert body["error"]["code"] == "too_many_connections"
    assert read_all(extra) == b""  # and closed
    for sock in held:
        sock.close()
    time.sleep(0.1)
    again = connect(server)
    again.send(HEALTH)
    assert read_response(again)[0] == 200
    again.close()


def test_oversized_head_gets_431_but_a_big_body_in_the_same_read_is_served(
    server: ServerThread, upstream: FakeUpstream
) -> None:
    sock = connect(server)
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 100_000
                 + b"\r\n\r\n")
    assert read_all(sock).startswith(b"HTTP/1.1 431 ")
    upstream.reset()
    body = json.dumps({"model": "weak", "messages": [
        {"role": "user", "content": "x" * 300_000}]}).encode()
    sock = connect(server)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                 b"Content-Type: application/json\r\nContent-Length: "
                 + str(len(body)).encode() + b"\r\n\r\n" + body)
    assert read_response(sock)[0] == 200
    sock.close()


def test_pipelined_requests_are_all_answered(server: ServerThread) -> None:
    sock = connect(server)
    sock.sendall(HEALTH * 3)
    assert [read_response(sock)[0] for _ in range(3)] == [200, 200, 200]
    sock.close()


def test_cap_is_fitted_below_the_open_files_limit() -> None:
    assert fit_max_connections(1000, 20_000, 1) == (1000, None)
    cap, notice = fit_max_connections(10_000, 4096, 2)
    # two descriptors per connection, the idle upstream pool (512 a host) and a reserve
    assert cap == (4096 - 256 - 1024) // 2
    assert notice is not None and "ulimit -n" in notice
    soft = raise_open_files_limit()
    import resource

    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft


def test_limits_are_settings_with_checked_values(tmp_path) -> None:  # noqa: ANN001
    path = tmp_path / "serve.yaml"
    path.write_text("server: {header_timeout_s: 5, body_timeout_s: 20, keep_alive_s: 3, "
                    "max_connections: 500}\n")
    config = build_config(config_path=path, routers=["random"], strong_model="a",
                          weak_model="b")
    assert limits_of(config) == ConnectionLimits(5.0, 20.0, 3.0, 500)
    assert limits_of(build_config(routers=["random"], strong_model="a", weak_model="b")) \
        == ConnectionLimits()
    path.write_text("server: {header_timeout_s: 0}\n")
    with pytest.raises(ConfigError, match="header_timeout_s must be in"):
        build_config(config_path=path, routers=["random"], strong_model="a", weak_model="b")
    path.write_text("server: {max_connections: many}\n")
    with pytest.raises(ConfigError, match="server.max_connections must be an integer"):
        build_config(config_path=path, routers=["random"], strong_model="a", weak_model="b")
