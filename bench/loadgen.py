"""A lean HTTP/1.1 keep-alive load generator: asyncio protocols (no streams) on uvloop when it
is installed.

bench/server.py's stream-based client spends more CPU per request (about 0.6 ms on the 2-core
host) than the server it measures (about 0.4 ms): on a small machine it is the bottleneck, and
adding server processes cannot show. This one spends a fraction of that, so the server is what
saturates. Non-streamed responses only (Content-Length bodies).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable


class _Client(asyncio.Protocol):
    """One connection sending requests back to back: the next as soon as a response ends."""

    def __init__(self, run: _Run) -> None:
        self.run = run
        self.buffer = bytearray()
        self.transport: asyncio.Transport | None = None
        self.started = 0.0
        self.need = -1  # bytes of the current response (head + body), -1: head not parsed
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._send()

    def _send(self) -> None:
        if not self.run.more():
            assert self.transport is not None
            self.transport.close()
            return
        self.started = time.perf_counter()
        assert self.transport is not None
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            if self.need < 0:
                end = self.buffer.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buffer[:end]).lower()
                start = head.find(b"content-length:")
                if start < 0:  # not expected from the server: count it and reconnect
                    self.run.failures += 1
                    assert self.transport is not None
                    self.transport.close()
                    return
                stop = head.find(b"\r\n", start)
                length = int(head[start + 15 : stop if stop > 0 else len(head)])
                self.status = int(head[9:12])
                self.need = end + 4 + length
            if len(self.buffer) < self.need:
                return
            del self.buffer[: self.need]
            self.need = -1
            self.run.done(self.status, time.perf_counter() - self.started)
            self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.run.more():  # the server hung up on a client mid-run
            self.run.failures += 1
        if not self.closed.done():
            self.closed.set_result(None)


class _Run:
    def __init__(self, make_request: Callable[[int], bytes], duration: float) -> None:
        self.make_request = make_request
        self.stop_at = time.perf_counter() + duration
        self.sent = 0
        self.failures = 0
        self.latencies: list[float] = []

    def more(self) -> bool:
        return time.perf_counter() < self.stop_at

    def next_request(self) -> bytes:
        self.sent += 1
        return self.make_request(self.sent)

    def done(self, status: int, seconds: float) -> None:
        if status != 200:
            self.failures += 1
        self.latencies.append(seconds)


async def load(port: int, make_request: Callable[[int], bytes], clients: int,
               duration: float) -> dict:
    """Send `make_request(i)` (i = 1, 2, ...) from `clients` keep-alive connections for
    `duration` seconds; requests/s, failures and latency percentiles."""
    loop = asyncio.get_running_loop()
    run = _Run(make_request, duration)
    began = time.perf_counter()
    connections = [await loop.create_connection(lambda: _Client(run), "127.0.0.1", port)
                   for _ in range(clients)]
    await asyncio.gather(*(protocol.closed for _, protocol in connections))
    elapsed = time.perf_counter() - began
    latencies = sorted(run.latencies)
    n = len(latencies)
    return {
        "requests": n, "failures": run.failures, "rps": n / elapsed,
        "p50_ms": latencies[n // 2] * 1000 if n else float("nan"),
        "p99_ms": latencies[int(n * 0.99)] * 1000 if n else float("nan"),
    }


def run_load(port: int, make_request: Callable[[int], bytes], clients: int,
             duration: float) -> dict:
    """`load` on a fresh event loop (uvloop's when installed: less client CPU per request)."""
    try:
        import uvloop

        return uvloop.run(load(port, make_request, clients, duration))
    except ImportError:
        return asyncio.run(load(port, make_request, clients, duration))
