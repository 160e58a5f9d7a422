"""Connection limits for the server's HTTP/1.1 transport: what one slow, idle or greedy client
may hold.

uvicorn has a keep-alive idle timeout but no deadline for a request's head or body, and no cap
on open connections that is checked before a connection is served: a client that sends one
header byte every few seconds (slowloris) or simply opens connections and sends nothing keeps a
file descriptor forever, until `accept()` fails with EMFILE and every client is refused. The
protocol class built here wraps uvicorn's own (httptools, else h11) and adds:

- a head deadline (`header_timeout_s`): a request's line and headers must arrive within this
  long of the connection opening, or of the request's first byte on a kept-alive connection,
  and must not exceed `max_header_bytes`. A connection that sent nothing is closed silently; one
  that sent part of a head gets a 408 (431 when the head is too large);
- a body deadline (`body_timeout_s`): the whole body must arrive within this long of the head;
  a late body gets a 408 and the connection is closed;
- a connection cap (`max_connections`), checked as each connection is accepted: beyond it the
  client gets an immediate `503` JSON error with `Retry-After`, and the socket is closed after
  a short linger so that the answer is read rather than lost to a reset.

The cap is also kept below the open-files limit (`fit_max_connections`), so that the descriptor
table cannot run out below it. Timers are armed only while a head or body is incomplete after a
read, so a request that arrives in one read costs no timer at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger("switchllm.serving.connections")

# Descriptors the server needs besides client connections: the listening socket, the decision
# log, router files, torch and event-loop pipes, stdio, lingering refusals.
RESERVED_FDS = 256
REFUSAL_LINGER_S = 1.0  # how long a refused socket waits for the client's EOF before closing
MAX_LINGERING = 128  # refused sockets lingering at once; beyond this they are closed at once
REFUSAL_LOG_INTERVAL_S = 10.0  # one log line per interval for refused connections, not one each


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take. Each field is a `server.*` YAML setting and a
    `switchllm serve` flag (docs/SERVING.md)."""

    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keep_alive_s: float = 15.0
    max_connections: int = 10_000
    max_header_bytes: int = 65_536


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (the default soft limit is
    often 1,024) and return the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):  # a sandbox that forbids it: keep what we have
            pass
    return soft


def fit_max_connections(requested: int, open_files: int, upstream_hosts: int,
                        idle_per_host: int = 512) -> tuple[int, str | None]:
    """The connection cap to use, and a notice when `requested` had to be lowered.

    Worst case, every client connection has a request in flight holding one upstream
    connection, and the upstream pool keeps up to `idle_per_host` idle connections per host:
    2 descriptors per client connection, plus the pool, plus RESERVED_FDS."""
    budget = (open_files - RESERVED_FDS - idle_per_host * max(1, upstream_hosts)) // 2
    budget = max(1, budget)
    if requested <= budget:
        return requested, None
    return budget, (f"max_connections lowered from {requested} to {budget}: the open-files "
                    f"limit is {open_files} (raise it with `ulimit -n` or LimitNOFILE)")


def _error_response(status: int, reason: str, message: str, code: str,
                    extra_headers: str = "") -> bytes:
    body = json.dumps({"error": {"message": message, "type": "server_error" if status >= 500
                                 else "invalid_request_error", "param": None, "code": code}})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n{extra_headers}\r\n{body}"
            ).encode()


class _Refusal(asyncio.Protocol):
    """A connection beyond the cap: answered 503 at once, then closed once the client has read
    it (its EOF) or after REFUSAL_LINGER_S. Closing at once with the client's request unread
    would send a reset, and the client would usually lose the answer."""

    lingering = 0

    def __init__(self, transport: asyncio.Transport, response: bytes) -> None:
        self.transport = transport
        transport.write(response)
        if _Refusal.lingering >= MAX_LINGERING or not transport.can_write_eof():
            transport.close()
            self.timer = None
            return
        _Refusal.lingering += 1
        transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(REFUSAL_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:  # the request nobody will serve
        pass

    def eof_received(self) -> bool:
        return False  # close

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            _Refusal.lingering -= 1


class _Refusals:
    """Counts refused connections and logs them once per interval (a flood must not flood the
    log too)."""

    def __init__(self) -> None:
        self.total = 0
        self._unlogged = 0
        self._logged_at = 0.0

    def add(self, cap: int) -> None:
        self.total += 1
        self._unlogged += 1
        now = time.monotonic()
        if now - self._logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("refused %d connection(s) beyond max_connections=%d", self._unlogged, cap)
            self._unlogged = 0
            self._logged_at = now


REFUSALS = _Refusals()

HEAD, BODY, APP, IDLE = range(4)  # where a connection's current request is


class _Guard:
    """Mixed in before uvicorn's HTTP protocol (which owns `transport`, `cycle`, `loop`,
    `connections`): head and body deadlines and the connection cap. `limits` is set on each
    built class."""

    limits: ConnectionLimits
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set
    cycle: Any

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        cap = self.limits.max_connections
        if len(self.connections) >= cap:
            REFUSALS.add(cap)
            refusal = _Refusal(transport, _error_response(
                503, "Service Unavailable",
                f"the server is at its connection limit ({cap}); retry shortly",
                "too_many_connections", "retry-after: 1\r\n"))
            transport.set_protocol(refusal)
            self._phase = -1  # not served: uvicorn's state was never set up
            return
        super().connection_made(transport)  # type: ignore[misc]
        self._phase = HEAD
        self._seen_cycle = None
        self._head_bytes = 0
        self._head_tail = b""
        self._head_started = self.loop.time()
        self._timer: asyncio.TimerHandle | None = self.loop.call_at(
            self._head_started + self.limits.header_timeout_s, self._head_timed_out)

    def data_received(self, data: bytes) -> None:
        if self._phase == IDLE:  # the first byte of the next request on a kept-alive connection
            self._phase = HEAD
            self._head_bytes = 0
            self._head_tail = b""
            self._head_started = self.loop.time()
        if self._phase == HEAD:
            if self._head_bytes + len(data) > self.limits.max_header_bytes and (
                    self._head_end(data) > self.limits.max_header_bytes):
                self._answer_and_close(431, "Request Header Fields Too Large",
                                       f"the request head is larger than "
                                       f"{self.limits.max_header_bytes} bytes", "header_too_large")
                return
            self._head_bytes += len(data)
            self._head_tail = data[-3:]
        super().data_received(data)  # type: ignore[misc]
        self._sync()
        if self._phase == HEAD and not self.transport.is_closing():
            if self._timer is None:
                self._timer = self.loop.call_at(
                    self._head_started + self.limits.header_timeout_s, self._head_timed_out)

    def on_response_complete(self) -> None:
        super().on_response_complete()  # type: ignore[misc]
        self._sync()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._phase == -1:
            return
        self._cancel()
        super().connection_lost(exc)  # type: ignore[misc]

    def _head_end(self, data: bytes) -> float:
        """Where the head ends, counted from its first byte, if it ends in `data` (which may
        carry body bytes after it); infinity if it does not."""
        joined = self._head_tail + data
        end = joined.find(b"\r\n\r\n")
        if end < 0:
            return float("inf")
        return self._head_bytes - len(self._head_tail) + end + 4

    def send_400_response(self, msg: str) -> None:
        """uvicorn's answer to bytes that are not HTTP, as an OpenAI-style JSON error like
        every other error this server sends."""
        self._answer_and_close(400, "Bad Request", f"{msg.rstrip('.')}: not a valid HTTP/1.1 "
                               "request", "invalid_http")

    # ---- state ----------------------------------------------------------------------------
    def _sync(self) -> None:
        """Follow uvicorn's request cycle: a new cycle means a complete head."""
        cycle = self.cycle
        if cycle is None:
            return
        if cycle is not self._seen_cycle:
            self._seen_cycle = cycle
            self._cancel()
            self._phase = BODY
            self._body_started = self.loop.time()
        if self._phase == BODY:
            if not cycle.more_body or cycle.response_complete:
                self._cancel()
                self._phase = APP
            elif self._timer is None:
                self._timer = self.loop.call_at(
                    self._body_started + self.limits.body_timeout_s, self._body_timed_out)
        if self._phase == APP and cycle.response_complete:
            self._phase = IDLE  # uvicorn's keep-alive timer runs until the next byte

    def _cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _head_timed_out(self) -> None:
        self._timer = None
        if self._phase != HEAD or self.transport.is_closing():
            return
        if self._head_bytes == 0:  # connected (or kept alive) and sent nothing: just close
            self.transport.close()
            return
        self._answer_and_close(408, "Request Timeout", "the request head did not arrive within "
                               f"{self.limits.header_timeout_s:g} s", "header_timeout")

    def _body_timed_out(self) -> None:
        self._timer = None
        cycle = self.cycle
        if self._phase != BODY or self.transport.is_closing():
            return
        if cycle.response_started:
            self.transport.close()
            return
        # The app is waiting for the body: it sees a disconnect and gives up; nothing else
        # may write to this connection.
        cycle.disconnected = True
        cycle.message_event.set()
        self._answer_and_close(408, "Request Timeout", "the request body did not arrive within "
                               f"{self.limits.body_timeout_s:g} s", "body_timeout")

    def _answer_and_close(self, status: int, reason: str, message: str, code: str) -> None:
        self._cancel()
        self.transport.write(_error_response(status, reason, message, code))
        self.transport.close()


def _uvicorn_protocol() -> type[asyncio.Protocol]:
    """uvicorn's own choice ("auto"): httptools when installed, else h11."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    return AutoHTTPProtocol


def guarded_protocol(limits: ConnectionLimits,
                     base: type[asyncio.Protocol] | None = None) -> type[asyncio.Protocol]:
    """A uvicorn HTTP protocol class (`uvicorn.Config(http=...)`) that enforces `limits`."""
    base = base or _uvicorn_protocol()
    return type(f"Guarded{base.__name__}", (_Guard, base), {"limits": limits})


class WorkerProtocol(_Guard, _uvicorn_protocol()):  # type: ignore[misc]
    """The guarded protocol by import path, for `--workers` processes (uvicorn pickles its
    config to start them, and a class built at run time cannot be pickled). Each worker sets
    `limits` from its own configuration (`configure_worker`)."""

    limits = ConnectionLimits()


def limits_of(config: Any) -> ConnectionLimits:
    """The ConnectionLimits of a ServingConfig."""
    return ConnectionLimits(
        header_timeout_s=config.header_timeout_s, body_timeout_s=config.body_timeout_s,
        keep_alive_s=config.keep_alive_s, max_connections=config.max_connections,
        max_header_bytes=config.max_header_bytes,
    )


def upstream_hosts(config: Any) -> int:
    from urllib.parse import urlsplit

    return len({urlsplit(spec.base_url).netloc for spec in config.models.values()})


def server_options(config: Any, *, for_workers: bool = False) -> tuple[dict[str, Any], str | None]:
    """uvicorn options enforcing a ServingConfig's connection limits, and a notice when the cap
    had to be lowered to fit the open-files limit (which is raised to its hard limit first)."""
    limits = limits_of(config)
    cap, notice = fit_max_connections(limits.max_connections, raise_open_files_limit(),
                                      upstream_hosts(config))
    if cap != limits.max_connections:
        limits = ConnectionLimits(limits.header_timeout_s, limits.body_timeout_s,
                                  limits.keep_alive_s, cap, limits.max_header_bytes)
    if for_workers:
        WorkerProtocol.limits = limits
        http: Any = "switchllm.serving.connections:WorkerProtocol"
    else:
        http = guarded_protocol(limits)
    return {"http": http, "timeout_keep_alive": limits.keep_alive_s,
            "h11_max_incomplete_event_size": limits.max_header_bytes}, notice


def configure_worker(config: Any) -> None:
    """In a `--workers` process: enforce this process's configuration."""
    server_options(config, for_workers=True)
