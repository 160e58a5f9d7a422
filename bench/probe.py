"""Replay every defect of issue 7 against a live `switchllm serve` and say, per defect, whether it
reproduces; then the totals the issue's targets name: innocent requests failed, 5xx answers to
bad client input, tracebacks in the server's log.

    python bench/probe.py                 # random router; mf too when its card loads
    python bench/probe.py --no-mf --json out.json

The server runs as a subprocess with a YAML config whose two models, `strong` and `weak`, are
served by `Upstream` below: a loopback OpenAI-compatible server whose behaviour per model can be
switched to each fault the issue measured (drip-fed bodies, bad Content-Length, a 1 MiB header,
malformed usage and choices, 429 with Retry-After, key echoes, streams without [DONE], hangs).
Innocent traffic (router-random-0.5) runs in the background all along, except while an upstream
fault is staged on both models; every innocent request must succeed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
KEY = "sk-proj-probeKEYabcdefghijklmnopqrstuvwxyz0123456789wxyz"
OK_TEXT = "probe answer"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- the staged upstream ---------------------------------------------------------------------
class Upstream:
    """Per-model modes: ok, drip, hang, bad_length, huge_header, usage_lots, usage_negative,
    stream_choices_5, stream_no_done, r429, echo_key, slow_500. Counts calls per model."""

    def __init__(self) -> None:
        self.modes: dict[str, str] = {}
        self.calls: dict[str, int] = {}
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self._run, daemon=True).start()
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.02)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", self.port, limit=2**22))
        self.loop.run_until_complete(server.serve_forever())

    def set(self, **modes: str) -> None:
        self.modes.update(modes)

    def reset(self) -> None:
        self.modes.clear()
        self.calls.clear()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = json.loads(await reader.readexactly(length) or b"{}")
                model = body.get("model", "?")
                self.calls[model] = self.calls.get(model, 0) + 1
                if not await self._answer(writer, model, body):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError,
                ValueError):
            pass
        finally:
            writer.close()

    @staticmethod
    def _json(status: int, obj: Any, extra: str = "") -> bytes:
        data = json.dumps(obj).encode()
        return (f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n{extra}"
                f"content-length: {len(data)}\r\n\r\n").encode() + data

    @staticmethod
    def _completion(model: str, usage: Any = None) -> dict:
        return {"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": OK_TEXT}}],
                "usage": usage if usage is not None else
                {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}}

    async def _answer(self, writer: asyncio.StreamWriter, model: str, body: dict) -> bool:
        mode = self.modes.get(model, "ok")
        stream = bool(body.get("stream"))
        if mode == "hang":
            await asyncio.sleep(3600)
        if mode == "slow_500":
            await asyncio.sleep(1.5)
            writer.write(self._json(500, {"error": {"message": "boom"}}))
            return True
        if mode == "r429":
            writer.write(self._json(429, {"error": {"message": "slow down"}},
                                    "retry-after: 5\r\n"))
            return True
        if mode == "echo_key":
            writer.write(self._json(400, {"error": {
                "message": f"Incorrect API key provided: {KEY[:12]}****{KEY[-4:]}",
                "type": "invalid_request_error"}}))
            return True
        if mode == "bad_length":
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"content-length: 5000\r\n\r\n{\"id\": ")
            return False
        if mode == "huge_header":
            writer.write(b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * (1_100_000) + b"\r\n\r\n")
            return False
        if mode in ("stream_choices_5", "stream_no_done") or stream:
            return await self._stream(writer, model, mode)
        if mode == "drip":
            data = self._json(200, self._completion(model))
            for i in range(0, len(data), 8):
                writer.write(data[i:i + 8])
                await writer.drain()
                await asyncio.sleep(0.5)
            return True
        usage: Any = {"usage_lots": "lots", "usage_negative": {
            "prompt_tokens": -5, "completion_tokens": -3}}.get(mode)
        writer.write(self._json(200, self._completion(model, usage)))
        return True

    async def _stream(self, writer: asyncio.StreamWriter, model: str, mode: str) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                     b"transfer-encoding: chunked\r\n\r\n")

        def event(obj: Any) -> None:
            data = b"data: " + json.dumps(obj).encode() + b"\n\n"
            writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

        base = {"id": "s1", "object": "chat.completion.chunk", "created": 0, "model": model}
        if mode == "stream_choices_5":
            event({**base, "choices": 5})
        else:
            event({**base, "choices": [{"index": 0, "delta": {"role": "assistant",
                                                              "content": OK_TEXT}}]})
            event({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
            if mode != "stream_no_done":
                data = b"data: [DONE]\n\n"
                writer.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        writer.write(b"0\r\n\r\n")
        return True


# ---- the client side -------------------------------------------------------------------------
class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.bad_input_5xx = 0  # 5xx answers to bad client input

    def raw(self, data: bytes, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
        """Send `data` on a fresh connection; (status, head, body) of the answer, read until the
        server closes (requests carry connection: close). Status 0: no answer."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as sock:
            sock.sendall(data)
            answer = b""
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except (TimeoutError, ConnectionResetError):
                pass
        if not answer.startswith(b"HTTP/1.1 "):
            return 0, b"", answer
        head, _, body = answer.partition(b"\r\n\r\n")
        return int(head.split()[1]), head.lower(), body

    def request(self, method: str, path: str, body: bytes = b"", *, content_type: str =
                "application/json", host: str = "127.0.0.1", extra: str = "",
                bad_input: bool = False, timeout: float = 30.0) -> tuple[int, bytes, bytes]:
        data = (f"{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-type: {content_type}\r\n"
                f"content-length: {len(body)}\r\nconnection: close\r\n{extra}\r\n").encode()
        status, head, payload = self.raw(data + body, timeout)
        if bad_input and status >= 500:
            self.bad_input_5xx += 1
        return status, head, payload

    def chat(self, content: str | None = "hi", model: str = "router-random-0.5",
             stream: bool = False, raw_body: bytes | None = None, **kwargs: Any
             ) -> tuple[int, bytes, bytes]:
        body = raw_body if raw_body is not None else json.dumps({
            "model": model, "stream": stream,
            "messages": [{"role": "user", "content": content}]}).encode()
        return self.request("POST", "/v1/chat/completions", body, **kwargs)


class Innocents:
    """Background innocent traffic: one chat request at a time, router-random-0.5."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.sent = self.failed = 0
        self.failures: list[str] = []
        self.running = threading.Event()
        self.stopped = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        i = 0
        while not self.stopped:
            if not self.running.wait(0.1):
                continue
            i += 1
            status, _, body = self.client.chat(f"innocent question {i} about sorting")
            self.sent += 1
            if status != 200 or OK_TEXT.encode() not in body:
                self.failed += 1
                self.failures.append(f"{status} {body[:120]!r}")
            time.sleep(0.01)


# ---- the probes ------------------------------------------------------------------------------
Probe = Callable[..., tuple[bool, str]]  # -> (reproduced, detail)


def probe_1(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """A lone surrogate poisons its micro-batch (mf), or gives a 500 elsewhere."""
    routers = ["random"] + (["mf"] if ctx["mf"] else [])
    bad = b'{"model": "router-%s-0.5", "messages": [{"role": "user", "content": "hi \\ud800"}]}'
    results: list[tuple[str, int]] = []

    def innocent(router: str, i: int) -> None:
        results.append(("innocent", c.chat(f"batch neighbour {i}",
                                           model=f"router-{router}-0.5")[0]))

    def poison(router: str) -> None:
        results.append(("bad", c.chat(raw_body=bad % router.encode(), bad_input=True)[0]))

    threads = []
    for router in routers:
        for i in range(60):
            threads.append(threading.Thread(target=innocent, args=(router, i)))
            if i % 10 == 0:
                threads.append(threading.Thread(target=poison, args=(router,)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    innocent_failed = sum(1 for kind, s in results if kind == "innocent" and s != 200)
    bad_not_400 = sum(1 for kind, s in results if kind == "bad" and s != 400)
    other = c.request("POST", "/v1/chat/completions", json.dumps({
        "model": "weak", "messages": [{"role": "user", "content": "hi"}],
        "user": "\udc00"}).encode(), bad_input=True)[0]
    return (innocent_failed > 0 or bad_not_400 > 0 or other != 400,
            f"routers {routers}: {innocent_failed} of {sum(k == 'innocent' for k, _ in results)}"
            f" neighbours failed; surrogate requests not 400: {bad_not_400}; surrogate in "
            f"another field: {other}")


def probe_2(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """No header timeout (slowloris), idle connections never closed, no connection cap."""
    timeout = ctx["header_timeout"]
    sock = socket.create_connection(("127.0.0.1", c.port))
    sock.settimeout(timeout + 5)
    started = time.monotonic()
    closed_after = None
    try:
        for byte in b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-a: " + b"a" * 100:
            sock.send(bytes([byte]))
            sock.settimeout(1.0)
            try:
                if sock.recv(4096) is not None:
                    closed_after = time.monotonic() - started
                    break
            except TimeoutError:
                continue
    except OSError:
        closed_after = time.monotonic() - started
    sock.close()
    idle = [socket.create_connection(("127.0.0.1", c.port)) for _ in range(200)]
    time.sleep(timeout + 1.0)
    still_open = 0
    for s in idle:
        s.setblocking(False)
        try:
            if s.recv(1) != b"":
                still_open += 1
        except BlockingIOError:
            still_open += 1
        except OSError:
            pass
        s.close()
    # the cap (the probe server runs with --max-connections 300); innocents pause meanwhile,
    # since a full server refuses them too
    ctx["innocents"].running.clear()
    time.sleep(0.3)
    held = [socket.create_connection(("127.0.0.1", c.port)) for _ in range(ctx["cap"])]
    time.sleep(0.3)
    status, _, body = c.request("GET", "/health")
    for s in held:
        s.close()
    time.sleep(0.3)
    after = c.request("GET", "/health")[0]
    ctx["innocents"].running.set()
    reproduced = (closed_after is None or closed_after > timeout + 1.5 or still_open > 0
                  or status != 503 or after != 200)
    return reproduced, (f"slowloris closed after {closed_after and round(closed_after, 1)} s "
                        f"(header timeout {timeout} s); idle still open after the timeout: "
                        f"{still_open} of 200; beyond the cap: {status} "
                        f"{json.loads(body or b'{}').get('error', {}).get('code')}; "
                        f"after: {after}")


def probe_3(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """A 3.9 MB prompt blocks mf routing for everyone."""
    if not ctx["mf"]:
        return False, "not run: the mf card did not load (--no-mf or no embedding model)"
    big = json.dumps({"model": "router-mf-0.5", "messages": [
        {"role": "user", "content": "word " * 780_000}]}).encode()
    results: list[float] = []

    def small(i: int) -> None:
        started = time.perf_counter()
        status = c.chat(f"small question {i}", model="router-mf-0.5")[0]
        results.append(time.perf_counter() - started if status == 200 else 99.0)

    bigs = [threading.Thread(target=c.request, args=("POST", "/v1/chat/completions", big))
            for _ in range(4)]
    for t in bigs:
        t.start()
    time.sleep(0.2)
    smalls = [threading.Thread(target=small, args=(i,)) for i in range(10)]
    for t in smalls:
        t.start()
    for t in smalls + bigs:
        t.join()
    worst = max(results)
    return worst > 3.0, f"4 prompts of 3.9 MB in flight: slowest of 10 small mf requests " \
                        f"{worst:.2f} s (was 24 s)"


def probe_4(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """--timeout is per read: a drip-fed answer holds a request far past it."""
    up.set(strong="drip")
    started = time.perf_counter()
    status, head, _ = c.chat("hi", model="strong")
    elapsed = time.perf_counter() - started
    up.reset()
    return (elapsed > ctx["timeout"] + 2 or status != 200,
            f"--timeout {ctx['timeout']}: answered {status} in {elapsed:.1f} s "
            f"(fallback {b'x-switchllm-fallback: true' in head})")


def probe_5(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """The embedding cache grows without bound."""
    if not ctx["mf"]:
        return False, "not run: the mf card did not load"
    for i in range(ctx["cache_cap"] * 3):
        c.chat(f"unique cache prompt number {i} {i * 7919}", model="router-mf-0.5")
    ctx["check_cache_after_exit"] = True
    return False, f"sent {ctx['cache_cap'] * 3} unique prompts with a cap of " \
                  f"{ctx['cache_cap']} entries; entries on disk are counted after shutdown"


def probe_6(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """Browser CSRF (text/plain POST) and DNS rebinding (foreign Host) spend upstream credit."""
    ctx["innocents"].running.clear()  # count only this probe's upstream calls
    time.sleep(0.3)
    before = sum(up.calls.values())
    body = json.dumps({"model": "weak", "messages": [{"role": "user", "content": "x"}]}).encode()
    plain = c.request("POST", "/v1/chat/completions", body, content_type="text/plain",
                      extra="origin: http://evil.example\r\n", bad_input=True)[0]
    rebound = c.request("POST", "/v1/chat/completions", body, host="evil.example:6060",
                        extra="origin: http://evil.example:6060\r\n", bad_input=True)[0]
    spent = sum(up.calls.values()) - before
    ctx["innocents"].running.set()
    return (plain != 415 or rebound != 403 or spent > 0,
            f"text/plain POST: {plain}; foreign Host: {rebound}; upstream calls: {spent}")


def probe_7(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """1,000-deep nested JSON gives a 500 with a RecursionError traceback."""
    statuses = []
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses",
                 "/v1/feedback"):
        body = b'{"model": "weak", "x": ' + b"[" * 1000 + b"]" * 1000 + b"}"
        statuses.append(c.request("POST", path, body, bad_input=True)[0])
    return any(s != 400 for s in statuses), f"statuses {statuses}"


def probe_8(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """Malformed upstream answers give a 500 with no fallback; negative usage loses the row."""
    outcomes = {}
    for mode in ("bad_length", "huge_header", "usage_lots", "usage_negative"):
        up.set(strong=mode)
        status, head, body = c.chat("hi", model="strong")
        outcomes[mode] = (status, OK_TEXT.encode() in body)
    up.set(strong="stream_choices_5")
    status, _, body = c.chat("hi", model="strong", stream=True)
    outcomes["stream_choices_5"] = (status, OK_TEXT.encode() in body)
    up.reset()
    bad = {k: v for k, v in outcomes.items() if v != (200, True)}
    ctx["negative_usage_row_expected"] = True
    return bool(bad), f"answers (status, content ok): {outcomes}"


def probe_9(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """SIGHUP kills the server unflushed (the SIGKILL loss is bench/durability.py's)."""
    log = ctx["log"]
    ctx["innocents"].running.clear()
    time.sleep(0.3)
    ids = []
    for i in range(20):
        _, head, _ = c.chat(f"hup {i}")
        ids += [line.split(b":")[1].strip().decode() for line in head.split(b"\r\n")
                if line.startswith(b"x-switchllm-request-id")]
    ctx["server"].send_signal(signal.SIGHUP)
    time.sleep(0.3)
    with sqlite3.connect(log) as connection:
        written = connection.execute(
            f"SELECT COUNT(*) FROM decisions WHERE request_id IN ({','.join('?' * len(ids))})",
            ids).fetchone()[0]
    alive = ctx["server"].poll() is None and c.request("GET", "/health")[0] == 200
    ctx["innocents"].running.set()
    mode = stat.S_IMODE(os.stat(log).st_mode)
    return (not alive or written != len(ids) or mode != 0o600,
            f"log flush interval 5 s: {written} of {len(ids)} rows written 0.3 s after SIGHUP; "
            f"still serving: {alive}; log mode {oct(mode)}")


def probe_10(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """429 handling hammers a rate-limited upstream; the client never gets Retry-After."""
    ctx["innocents"].running.clear()
    time.sleep(0.3)
    up.reset()
    up.set(strong="r429", weak="r429")
    status, head, _ = c.chat("hi", model="strong")
    calls_first = dict(up.calls)
    for _ in range(5):
        c.chat("again", model="strong")
    calls = dict(up.calls)
    up.reset()
    time.sleep(5.5)  # both models wait out their Retry-After before anyone calls them again
    ctx["innocents"].running.set()
    retry_after = b"retry-after:" in head
    hammered = calls.get("strong", 0) > calls_first.get("strong", 0)
    return (status != 429 or not retry_after or hammered,
            f"client got {status}, Retry-After {'sent' if retry_after else 'missing'}; strong "
            f"called {calls_first.get('strong', 0)} time(s) by the first request and "
            f"{calls.get('strong', 0) - calls_first.get('strong', 0)} more by 5 requests "
            "within its Retry-After")


def probe_11(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """Departed clients still cost money: fallback calls for a client that hung up."""
    ctx["innocents"].running.clear()
    time.sleep(0.3)
    up.reset()
    up.set(strong="slow_500")
    body = json.dumps({"model": "strong", "messages": [
        {"role": "user", "content": "leaving"}]}).encode()
    sock = socket.create_connection(("127.0.0.1", c.port))
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: "
                 b"application/json\r\ncontent-length: " + str(len(body)).encode()
                 + b"\r\n\r\n" + body)
    time.sleep(0.4)
    sock.close()
    time.sleep(2.5)
    weak_calls = up.calls.get("weak", 0)
    up.reset()
    ctx["innocents"].running.set()
    return weak_calls > 0, f"fallback calls made for the departed client: {weak_calls}"


def probe_12(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """A stream that ends cleanly without [DONE] gets an error event appended."""
    up.set(strong="stream_no_done")
    status, _, body = c.chat("hi", model="strong", stream=True)
    up.reset()
    error = b'"error"' in body
    done = b"data: [DONE]" in body
    return status != 200 or error or not done, f"status {status}, error event {error}, " \
                                               f"[DONE] {done}"


def probe_13(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """A key fragment echoed in an upstream 400 reaches the client unredacted."""
    ctx["innocents"].running.clear()  # both models fail while staged
    time.sleep(0.3)
    up.set(strong="echo_key", weak="echo_key")
    status, _, body = c.chat("hi", model="strong")
    up.reset()
    ctx["innocents"].running.set()
    leaked = KEY[:12].encode() in body or KEY[-4:].encode() + b'"' in body
    return leaked, f"status {status}; fragment {'LEAKED' if leaked else 'redacted'}: " \
                   f"{body[:160]!r}"


def probe_minor(c: Client, up: Upstream, ctx: dict) -> tuple[bool, str]:
    """The minor items: stream "false", NaN forwarded, any method answered, /health lists
    models, a key in the YAML."""
    stream_false = c.chat(raw_body=b'{"model": "weak", "stream": "false", "messages": '
                                   b'[{"role": "user", "content": "hi"}]}', bad_input=True)[0]
    stream_null = c.chat(raw_body=b'{"model": "weak", "stream": [null], "messages": '
                                  b'[{"role": "user", "content": "hi"}]}', bad_input=True)[0]
    nan = c.chat(raw_body=b'{"model": "weak", "temperature": NaN, "messages": '
                          b'[{"role": "user", "content": "hi"}]}', bad_input=True)[0]
    delete = c.request("DELETE", "/metrics", bad_input=True)[0]
    _, _, health = c.request("GET", "/health")
    health_ok = json.loads(health) == {"status": "online"}
    yaml_key = ctx["yaml_key_refused"]
    bad = (stream_false != 400 or stream_null != 400 or nan != 400 or delete != 405
           or not health_ok or not yaml_key)
    return bad, (f'"stream": "false" -> {stream_false}, [null] -> {stream_null}, NaN -> {nan}, '
                 f"DELETE /metrics -> {delete}, /health {health!r}, api_key in YAML refused: "
                 f"{yaml_key}")


PROBES: list[tuple[str, Probe]] = [
    ("1 surrogate poisons the batch", probe_1), ("2 no header/idle timeouts, no cap", probe_2),
    ("3 long prompt blocks routing", probe_3), ("4 --timeout per read", probe_4),
    ("5 unbounded embedding cache", probe_5), ("6 CSRF / DNS rebinding", probe_6),
    ("7 deep JSON 500", probe_7), ("8 malformed upstream 500", probe_8),
    ("9 SIGHUP / log durability", probe_9), ("10 429 hammering", probe_10),
    ("11 departed clients cost money", probe_11), ("12 stream without [DONE]", probe_12),
    ("13 key fragment echoed", probe_13), ("minor items", probe_minor),
]


def mf_loads() -> bool:
    try:
        sys.path.insert(0, str(ROOT))
        from switchllm.routers import load_router

        load_router("mf")
        return True
    except Exception:  # noqa: BLE001 - any failure means: run without mf
        return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-mf", action="store_true", help="probe with the random router only")
    parser.add_argument("--header-timeout", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    mf = not args.no_mf and mf_loads()
    tmp = Path(tempfile.mkdtemp(prefix="switchllm-probe-"))
    up = Upstream()
    base = f"http://127.0.0.1:{up.port}/v1"
    config = tmp / "serve.yaml"
    config.write_text(
        f"routers: [random{', mf' if mf else ''}]\nstrong_model: strong\nweak_model: weak\n"
        f"models:\n  strong: {{base_url: '{base}', api_key_env: PROBE_KEY}}\n"
        f"  weak: {{base_url: '{base}'}}\n")
    key_yaml = tmp / "key.yaml"
    key_yaml.write_text(f"models:\n  strong: {{base_url: '{base}', api_key: {KEY}}}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PROBE_KEY": KEY,
           "SWITCHLLM_CACHE_DIR": str(tmp / "cache"), "SWITCHLLM_CACHE_MAX_ENTRIES": "100"}
    refused = subprocess.run(
        [sys.executable, "-m", "switchllm", "serve", "--config", str(key_yaml), "--routers",
         "random"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    yaml_key_refused = (refused.returncode != 0 and "keys never belong" in refused.stderr
                        and KEY not in refused.stderr and "Traceback" not in refused.stderr)
    port = free_port()
    log = tmp / "d.sqlite"
    cap = 300
    stderr_path = tmp / "server.stderr"
    with open(stderr_path, "wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "switchllm", "serve", "--config", str(config), "--port",
             str(port), "--log", str(log), "--timeout", str(args.timeout), "--retries", "0",
             "--header-timeout", str(args.header_timeout), "--max-connections", str(cap),
             "--router-threads", "1", "--log-flush-ms", "5000"],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"the server exited: {stderr_path.read_text()[-2000:]}") from None
            time.sleep(0.1)
    client = Client(port)
    innocents = Innocents(client)
    ctx: dict[str, Any] = {"mf": mf, "header_timeout": args.header_timeout, "cap": cap,
                           "timeout": args.timeout, "log": log, "server": server,
                           "innocents": innocents, "cache_cap": 100,
                           "yaml_key_refused": yaml_key_refused}
    innocents.thread.start()
    innocents.running.set()
    results = []
    try:
        for name, probe in PROBES:
            started = time.perf_counter()
            try:
                reproduced, detail = probe(client, up, ctx)
            except Exception as exc:  # noqa: BLE001 - a probe that breaks is reported
                reproduced, detail = True, f"probe failed: {type(exc).__name__}: {exc}"
            results.append({"defect": name, "reproduced": reproduced, "detail": detail,
                            "seconds": round(time.perf_counter() - started, 1)})
            print(f"{'REPRODUCED' if reproduced else 'fixed     '}  {name}: {detail}",
                  flush=True)
        innocents.stopped = True
        innocents.thread.join(30)
        # SIGTERM with an upstream that hangs: the grace cap (defect 4's second half)
        up.set(strong="hang")
        threading.Thread(target=client.chat, kwargs={"model": "strong", "timeout": 60},
                         daemon=True).start()
        time.sleep(0.5)
        started = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        server.wait(120)
        shutdown_s = time.perf_counter() - started
    finally:
        if server.poll() is None:
            server.kill()
    results.append({"defect": "4b SIGTERM while the upstream hangs", "reproduced":
                    shutdown_s > 10 + 3, "detail": f"exited in {shutdown_s:.1f} s "
                    "(shutdown_grace_s 10)"})
    print(f"{'REPRODUCED' if results[-1]['reproduced'] else 'fixed     '}  "
          f"{results[-1]['defect']}: {results[-1]['detail']}")
    with sqlite3.connect(log) as connection:
        negative = connection.execute(
            "SELECT COUNT(*) FROM decisions WHERE model = 'strong' AND status = 200").fetchone()[0]
    if ctx.get("check_cache_after_exit"):
        from safetensors.numpy import load_file

        entries = sum(len(load_file(str(p))["keys"])
                      for p in (tmp / "cache").rglob("*.safetensors"))
        results.append({"defect": "5 cache entries on disk after shutdown",
                        "reproduced": entries > 2 * ctx["cache_cap"] + 256,
                        "detail": f"{entries} entries (cap {ctx['cache_cap']}: at most twice "
                                  f"that plus one 256-row shard; {ctx['cache_cap'] * 3} "
                                  "unique prompts)"})
        print(f"{'REPRODUCED' if results[-1]['reproduced'] else 'fixed     '}  "
              f"{results[-1]['defect']}: {results[-1]['detail']}")
    log_text = stderr_path.read_text(errors="replace")
    totals = {
        "defects_reproduced": sum(r["reproduced"] for r in results),
        "innocent_requests": innocents.sent, "innocent_requests_failed": innocents.failed,
        "innocent_failures": innocents.failures[:5],
        "5xx_from_bad_client_input": client.bad_input_5xx,
        "tracebacks_in_log": log_text.count("Traceback"),
        "server_log_bytes": len(log_text.encode()),
        "strong_rows_logged": negative, "mf": mf,
    }
    print(json.dumps(totals, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "totals": totals},
                                              indent=2) + "\n")
    return 1 if totals["defects_reproduced"] or totals["innocent_requests_failed"] \
        or totals["5xx_from_bad_client_input"] or totals["tracebacks_in_log"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
