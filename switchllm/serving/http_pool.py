"""A lean pooled HTTP/1.1 client on asyncio streams, for calling upstream model endpoints.

Why not httpx: measured on the 2-core target machine against a local upstream, httpx alone
manages about 540 req/s at concurrency 1 and 250 req/s at 64 concurrent requests (its connection
pool polls every idle socket on every request), far below what the server must proxy. This
client does only what an OpenAI-compatible upstream needs: keep-alive connections per
(scheme, host, port), TLS, Content-Length and chunked bodies, streaming, connect and read
timeouts. No redirects, proxies, HTTP/2 or compression (it never asks for compression).

Why not aiohttp's client: measured with `bench/server.py --parts` (docs/SERVING.md,
Performance), a call through an aiohttp ClientSession costs 269 us of CPU one at a time and
189 us at 64 concurrent calls, against 88 us and 56 us here: at 64 clients that is about 100 us
more per proxied request, on top of roughly 360-530 us the whole server spends on one, and the
server served a third fewer req/s with it, beyond issue 7's rule (a well-kept part is taken
when it costs at most 0.3 ms p50 at concurrency 1 and 10% req/s at 64 clients).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

DEFAULT_MAX_RESPONSE_BYTES = 64 * 2**20  # a larger answer is a failed call, not a memory hog


class HTTPPoolError(Exception):
    """Base class: the request got no (complete) HTTP response."""


class ConnectError(HTTPPoolError):
    pass


class ReadTimeout(HTTPPoolError):
    pass


class ProtocolError(HTTPPoolError):
    """The connection broke or the peer sent something that is not HTTP/1.1."""


@dataclass(frozen=True)
class Target:
    """A parsed URL, with the request head prefix prepared once."""

    scheme: str
    host: str
    port: int
    path: str

    @classmethod
    def parse(cls, url: str) -> Target:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        return cls(parts.scheme, parts.hostname, port, path)

    @property
    def key(self) -> tuple[str, str, int]:
        return (self.scheme, self.host, self.port)

    @property
    def host_header(self) -> str:
        default = 443 if self.scheme == "https" else 80
        return self.host if self.port == default else f"{self.host}:{self.port}"


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    reused: bool = False

    def usable(self) -> bool:
        return not self.writer.is_closing() and not self.reader.at_eof()

    def close(self) -> None:
        self.writer.close()


@dataclass
class StreamResponse:
    """A response whose body is read incrementally with `aiter_raw()`; always `aclose()` it."""

    status: int
    headers: dict[str, str]
    _pool: HTTPPool
    _key: tuple[str, str, int]
    _conn: _Connection | None
    _chunked: bool
    _length: int | None
    _read_timeout: float
    _done: bool = field(default=False)
    max_bytes: int = DEFAULT_MAX_RESPONSE_BYTES  # aread() and one stream event at most

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._chunked:
                # Decode the chunk framing ourselves so that every chunk already received is
                # yielded at once (one write downstream per network read, not per chunk).
                decoder = _ChunkDecoder()
                while not decoder.finished:
                    async with asyncio.timeout(self._read_timeout):
                        data = await reader.read(65536)
                    if not data:
                        raise ProtocolError("connection closed inside a chunked body")
                    payload = decoder.feed(data)
                    if payload:
                        yield payload
                if decoder.leftover:
                    self._length = -1  # unexpected bytes after the body: do not reuse
            elif self._length is not None:
                remaining = self._length
                while remaining > 0:
                    async with asyncio.timeout(self._read_timeout):
                        data = await reader.read(min(remaining, 65536))
                    if not data:
                        raise ProtocolError("connection closed before the end of the body")
                    remaining -= len(data)
                    yield data
            else:  # body delimited by connection close
                while True:
                    async with asyncio.timeout(self._read_timeout):
                        data = await reader.read(65536)
                    if not data:
                        break
                    yield data
                self._length = -1  # not reusable
        except TimeoutError:
            raise ReadTimeout("upstream read timed out") from None
        except (asyncio.IncompleteReadError, ConnectionError, ValueError, OSError) as exc:
            raise ProtocolError(f"stream broke: {type(exc).__name__}") from None
        self._done = True

    async def aread(self) -> bytes:
        chunks, size = [], 0
        async for chunk in self.aiter_raw():
            size += len(chunk)
            if size > self.max_bytes:
                self._length = -1  # unread bytes remain: the connection is not reused
                raise ProtocolError(f"response body over {self.max_bytes} bytes")
            chunks.append(chunk)
        return b"".join(chunks)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        reusable = self._done and self._length != -1 and _keep_alive(self.headers)
        if reusable:
            self._pool._release(self._key, conn)
        else:
            conn.close()


class HTTPPool:
    def __init__(
        self, *, connect_timeout: float = 5.0, read_timeout: float = 60.0,
        max_idle_per_host: int = 512, ssl_context: ssl.SSLContext | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.connect_timeout = connect_timeout
        self.max_response_bytes = max_response_bytes
        self.read_timeout = read_timeout
        self.max_idle_per_host = max_idle_per_host
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._ssl = ssl_context  # default: the system's trusted CAs

    async def aclose(self) -> None:
        for connections in self._idle.values():
            for conn in connections:
                conn.close()
        self._idle.clear()

    def _release(self, key: tuple[str, str, int], conn: _Connection) -> None:
        idle = self._idle.setdefault(key, [])
        if len(idle) < self.max_idle_per_host and conn.usable():
            conn.reused = True
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, target: Target) -> _Connection:
        idle = self._idle.get(target.key)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        context = None
        if target.scheme == "https":
            if self._ssl is None:
                self._ssl = ssl.create_default_context()
                self._ssl.set_alpn_protocols(["http/1.1"])
            context = self._ssl
        try:
            async with asyncio.timeout(self.connect_timeout):
                reader, writer = await asyncio.open_connection(
                    target.host, target.port, ssl=context, limit=2**20
                )
        except TimeoutError:
            raise ConnectError(f"connecting to {target.host}:{target.port} timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(
                f"cannot connect to {target.host}:{target.port}: {type(exc).__name__}"
            ) from None
        return _Connection(reader, writer)

    async def stream(
        self, method: str, target: Target, headers: dict[str, str], body: bytes
    ) -> StreamResponse:
        """Send a request and read the response head; the body is read from the result."""
        head = [f"{method} {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\n"]
        head += [f"{name}: {value}\r\n" for name, value in headers.items()]
        head.append(f"content-length: {len(body)}\r\n\r\n")
        payload = "".join(head).encode("latin-1") + body
        for attempt in range(2):
            conn = await self._connect(target)
            try:
                conn.writer.write(payload)
                async with asyncio.timeout(self.read_timeout):
                    status, response_headers = await _read_head(conn.reader)
            except TimeoutError:
                conn.close()
                raise ReadTimeout("upstream did not answer in time") from None
            except asyncio.CancelledError:
                conn.close()  # half a request in flight: the connection cannot be reused
                raise
            except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError,
                    OSError, ValueError) as exc:
                conn.close()
                # A kept-alive connection the peer had already closed: retry once on a new one.
                if conn.reused and attempt == 0:
                    continue
                raise ProtocolError(f"no valid response: {type(exc).__name__}") from None
            chunked = "chunked" in response_headers.get("transfer-encoding", "").lower()
            length = None
            if not chunked and "content-length" in response_headers:
                try:
                    length = int(response_headers["content-length"])
                except ValueError:
                    length = -1
                if length < 0:
                    conn.close()
                    raise ProtocolError("invalid Content-Length in the response")
                if length > self.max_response_bytes:
                    conn.close()
                    raise ProtocolError(f"response body of {length} bytes is over the limit of "
                                        f"{self.max_response_bytes}")
            if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
                length = 0
            return StreamResponse(status, response_headers, self, target.key, conn, chunked,
                                  length, self.read_timeout,
                                  max_bytes=self.max_response_bytes)
        raise ProtocolError("no valid response")  # pragma: no cover - loop always returns

    async def request(
        self, method: str, target: Target, headers: dict[str, str], body: bytes
    ) -> Response:
        response = await self.stream(method, target, headers, body)
        try:
            data = await response.aread()
        finally:
            await response.aclose()
        return Response(response.status, response.headers, data)


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    raw = await reader.readuntil(b"\r\n\r\n")
    lines = raw.decode("latin-1").split("\r\n")
    status_line = lines[0].split(" ", 2)
    if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
        raise ValueError("not an HTTP/1.x response")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return int(status_line[1]), headers


class _ChunkDecoder:
    """Incremental decoder of an HTTP/1.1 chunked body."""

    def __init__(self) -> None:
        self.buffer = b""
        self.finished = False
        self.leftover = False

    def feed(self, data: bytes) -> bytes:
        self.buffer += data
        out: list[bytes] = []
        buf = self.buffer
        while True:
            line_end = buf.find(b"\r\n")
            if line_end < 0:
                break
            size = int(buf[:line_end].split(b";", 1)[0].strip(), 16)
            start = line_end + 2
            if size == 0:
                trailers_end = buf.find(b"\r\n\r\n", line_end)
                if buf[start : start + 2] == b"\r\n":
                    trailers_end = line_end
                if trailers_end < 0:
                    break  # trailers not complete yet
                self.finished = True
                self.leftover = len(buf) > trailers_end + 4
                buf = b""
                break
            if len(buf) < start + size + 2:
                break
            out.append(buf[start : start + size])
            buf = buf[start + size + 2 :]
        self.buffer = buf
        return b"".join(out)


def _keep_alive(headers: dict[str, str]) -> bool:
    return headers.get("connection", "").lower() != "close"
