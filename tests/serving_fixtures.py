"""Loopback servers for the serving tests and bench/server.py.

`FakeUpstream` is a real OpenAI-compatible HTTP/1.1 server on 127.0.0.1 (raw asyncio, so it is
fast enough to benchmark against) whose behaviour per model can be switched while it runs:
HTTP errors (always, for the next N calls, or for a share of calls), delays, dropped streams,
connections closed without an answer. `ServerThread` runs any ASGI app under uvicorn on a
random loopback port.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import uvicorn

from switchllm.routers import Router


@dataclass
class Behaviour:
    fail_status: int | None = None  # answer every call with this status
    fail_next: int = 0  # answer the next N calls with fail_status_next
    fail_status_next: int = 500
    fail_rate: float = 0.0  # answer this share of calls with HTTP 500
    delay_s: float = 0.0  # wait before answering
    drop_stream_after: int | None = None  # close a stream after this many events
    drop_connection: bool = False  # close the connection without answering
    reply: str = "Hello from the upstream"
    chunk_delay_s: float = 0.0  # pause between stream events
    echo_auth: bool = False  # put the Authorization header in error messages (leak tests)
    # per-request answer: the reply text for this request body, or an HTTP status to fail with
    respond: Callable[[dict[str, Any]], str | int] | None = None
    retry_after: str | None = None  # Retry-After header sent with failures
    payload: dict[str, Any] | None = None  # answer with this JSON instead (malformed upstreams)
    events: list[bytes] | None = None  # stream these SSE events instead
    drip_s: float = 0.0  # send a JSON answer 8 bytes at a time, this long apart
    retry_after: str | None = None  # Retry-After header value sent with failures


@dataclass
class Seen:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    path: str = "/v1/chat/completions"


@dataclass
class FakeUpstream:
    behaviours: dict[str, Behaviour] = field(default_factory=dict)
    seen: list[Seen] = field(default_factory=list)
    record: bool = True

    def __post_init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread: threading.Thread | None = None
        self.port = 0
        self._rng = random.Random(0)
        self.connections: set[_Connection] = set()
        self.streams_cut = 0  # streams whose client (the server) hung up before the end

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def behaviour(self, model: str) -> Behaviour:
        return self.behaviours.setdefault(model, Behaviour())

    def close_connections(self) -> None:
        """Close every open (kept-alive) connection from the server side, as upstreams do
        after an idle timeout."""
        assert self._loop is not None
        for conn in list(self.connections):
            if conn.transport is not None:
                self._loop.call_soon_threadsafe(conn.transport.close)

    def reset(self) -> None:
        self.behaviours.clear()
        self.seen.clear()

    # ---- lifecycle: in a thread (tests) or in the caller's loop (bench) -------------------
    def start(self) -> FakeUpstream:
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-upstream")
        self._thread.start()
        ready.wait(5)
        return self

    async def serve(self, port: int = 0, ssl_context: Any = None) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: _Connection(self), "127.0.0.1", port, backlog=1024, ssl=ssl_context
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        if self._loop is None:
            return
        loop = self._loop

        async def shutdown() -> None:
            if self._server is not None:
                self._server.close()
            loop.stop()

        asyncio.run_coroutine_threadsafe(shutdown(), loop)
        if self._thread is not None:
            self._thread.join(5)

    # ---- answers --------------------------------------------------------------------------
    def answer(self, body: dict[str, Any]) -> dict[str, Any]:
        model = str(body.get("model"))
        b = self.behaviour(model)
        if b.payload is not None:
            return b.payload
        n = int(body.get("n") or 1)
        choices = []
        for i in range(n):
            message: dict[str, Any] = {"role": "assistant", "content": b.reply}
            finish = "stop"
            if body.get("tools"):
                tool = body["tools"][0]["function"]["name"]
                message = {
                    "role": "assistant", "content": None,
                    "tool_calls": [{"id": f"call_{i}", "type": "function",
                                    "function": {"name": tool, "arguments": '{"city": "Paris"}'}}],
                }
                finish = "tool_calls"
            choices.append({"index": i, "message": message, "finish_reason": finish,
                            "logprobs": None})
        return {
            "id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()),
            "model": model + "-upstream-version", "choices": choices,
            "usage": {"prompt_tokens": 10, "completion_tokens": 5 * n, "total_tokens": 10 + 5 * n},
        }

    def answer_other(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """/embeddings, /completions and /responses answers."""
        model = str(body.get("model"))
        reply = self.behaviour(model).reply
        if path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            return {"object": "list", "model": model + "-upstream-version",
                    "data": [{"object": "embedding", "index": i,
                              "embedding": [float(len(str(text))), 1.0, 0.5]}
                             for i, text in enumerate(inputs)],
                    "usage": {"prompt_tokens": 3, "total_tokens": 3}}
        if path.endswith("/completions"):
            return {"id": "cmpl-fake", "object": "text_completion", "created": 1,
                    "model": model + "-upstream-version",
                    "choices": [{"index": 0, "text": reply, "finish_reason": "stop",
                                 "logprobs": None}],
                    "usage": {"prompt_tokens": 4, "completion_tokens": 5, "total_tokens": 9}}
        return self.response_object(model, reply, "completed")

    @staticmethod
    def response_object(model: str, text: str, status: str) -> dict[str, Any]:
        output = [{"type": "message", "id": "msg_fake", "status": status, "role": "assistant",
                   "content": [{"type": "output_text", "text": text, "annotations": []}]}]
        return {"id": "resp_fake", "object": "response", "created_at": 1, "status": status,
                "model": model + "-upstream-version", "output": output if text else [],
                "parallel_tool_calls": True, "tool_choice": "auto", "tools": [],
                "usage": {"input_tokens": 6, "output_tokens": 5, "total_tokens": 11}}

    def response_stream_events(self, body: dict[str, Any]) -> list[bytes]:
        model = str(body.get("model"))
        reply = self.behaviour(model).reply

        def event(obj: dict[str, Any]) -> bytes:
            return b"event: %s\ndata: %s\n\n" % (obj["type"].encode(), json.dumps(obj).encode())

        events = [event({"type": "response.created", "sequence_number": 0,
                         "response": self.response_object(model, "", "in_progress")}),
                  event({"type": "response.output_item.added", "sequence_number": 0,
                         "output_index": 0, "item": {"type": "message", "id": "msg_fake",
                                                     "status": "in_progress",
                                                     "role": "assistant", "content": []}}),
                  event({"type": "response.content_part.added", "sequence_number": 0,
                         "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                         "part": {"type": "output_text", "text": "", "annotations": []}})]
        for i, word in enumerate(reply.split(" ")):
            events.append(event({"type": "response.output_text.delta", "sequence_number": i + 1,
                                 "item_id": "msg_fake", "output_index": 0, "content_index": 0,
                                 "delta": word if i == 0 else " " + word, "logprobs": []}))
        events.append(event({"type": "response.completed", "sequence_number": 99,
                             "response": self.response_object(model, reply, "completed")}))
        return events

    def stream_events(self, body: dict[str, Any]) -> list[bytes]:
        model = str(body.get("model"))
        b = self.behaviour(model)
        if b.events is not None:
            return b.events
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1,
                "model": model + "-upstream-version"}

        def event(delta: dict, finish: str | None = None) -> bytes:
            chunk = {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return b"data: " + json.dumps(chunk).encode() + b"\n\n"

        events = [event({"role": "assistant", "content": ""})]
        words = b.reply.split(" ")
        for i, word in enumerate(words):
            events.append(event({"content": word if i == 0 else " " + word}))
        events.append(event({}, "stop"))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = {**base, "choices": [], "usage": {
                "prompt_tokens": 10, "completion_tokens": len(words),
                "total_tokens": 10 + len(words)}}
            events.append(b"data: " + json.dumps(usage).encode() + b"\n\n")
        events.append(b"data: [DONE]\n\n")
        return events

    def failure(self, model: str) -> int | None:
        b = self.behaviour(model)
        if b.fail_next > 0:
            b.fail_next -= 1
            return b.fail_status_next
        if b.fail_status is not None:
            return b.fail_status
        if b.fail_rate and self._rng.random() < b.fail_rate:
            return 500
        return None


class _Connection(asyncio.Protocol):
    def __init__(self, upstream: FakeUpstream) -> None:
        self.upstream = upstream
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.upstream.connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.upstream.connections.discard(self)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            lines = self.buffer[:end].decode("latin-1").split("\r\n")
            headers = {}
            for line in lines[1:]:
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.handle(lines[0], headers, body)

    def handle(self, request_line: str, headers: dict[str, str], raw: bytes) -> None:
        assert self.transport is not None
        try:
            body = json.loads(raw) if raw else {}
        except ValueError:
            self.respond(400, {"error": {"message": "bad json", "type": "invalid_request_error"}})
            return
        model = str(body.get("model"))
        up = self.upstream
        path = request_line.split(" ")[1] if " " in request_line else ""
        if up.record:
            up.seen.append(Seen(model, body, headers, path))
        b = up.behaviour(model)
        if b.drop_connection:
            self.transport.close()
            return
        if b.delay_s:
            asyncio.get_running_loop().call_later(
                b.delay_s, self.reply, body, model, headers.get("authorization", ""), path
            )
        else:
            self.reply(body, model, headers.get("authorization", ""), path)

    def reply(self, body: dict[str, Any], model: str, auth: str,
              path: str = "/v1/chat/completions") -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            return
        status = self.upstream.failure(model)
        hook = self.upstream.behaviour(model).respond
        answer = hook(body) if hook is not None and status is None else None
        if isinstance(answer, int):
            status = answer
        if status is not None:
            message = f"fake failure {status}"
            if self.upstream.behaviour(model).echo_auth:
                message += f" for key {auth}"
            retry_after = self.upstream.behaviour(model).retry_after
            self.respond(status, {"error": {"message": message,
                                            "type": "server_error", "code": None}},
                         {"retry-after": retry_after} if retry_after else None)
            return
        if not path.endswith("/chat/completions") and not body.get("stream"):
            self.respond(200, self.upstream.answer_other(path, body))
        elif body.get("stream"):
            self.stream(body, model, path)
        elif self.upstream.behaviour(model).drip_s:
            self.drip(self.upstream.answer(body), self.upstream.behaviour(model).drip_s)
        else:
            payload = self.upstream.answer(body)
            if isinstance(answer, str):
                payload["choices"][0]["message"]["content"] = answer
            self.respond(200, payload)

    def drip(self, obj: dict[str, Any], delay: float) -> None:
        assert self.transport is not None
        data = json.dumps(obj).encode()
        self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                             b"content-length: %d\r\n\r\n" % len(data))
        self.slow_write([data[i:i + 8] for i in range(0, len(data), 8)], delay)

    def slow_write(self, pieces: list[bytes], delay: float) -> None:
        assert self.transport is not None
        if self.transport.is_closing() or not pieces:
            return
        self.transport.write(pieces[0])
        asyncio.get_running_loop().call_later(delay, self.slow_write, pieces[1:], delay)

    def respond(self, status: int, obj: dict[str, Any],
                headers: dict[str, str] | None = None) -> None:
        assert self.transport is not None
        data = json.dumps(obj).encode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items()).encode()
        self.transport.write(
            b"HTTP/1.1 %d X\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s"
            % (status, len(data), extra, data)
        )

    def stream(self, body: dict[str, Any], model: str, path: str = "/chat/completions") -> None:
        assert self.transport is not None
        if path.endswith("/responses"):
            events = self.upstream.response_stream_events(body)
        elif path.endswith("/completions") and not path.endswith("/chat/completions"):
            events = [b"data: " + json.dumps({
                "id": "cmpl-fake", "object": "text_completion", "created": 1, "model": model,
                "choices": [{"index": 0, "text": word if i == 0 else " " + word,
                             "finish_reason": None}]}).encode()
                + b"\n\n" for i, word in enumerate(self.upstream.behaviour(model).reply.split(" "))]
            events.append(b"data: [DONE]\n\n")
        else:
            events = self.upstream.stream_events(body)
        drop = self.upstream.behaviour(model).drop_stream_after
        delay = self.upstream.behaviour(model).chunk_delay_s
        if delay:
            self.transport.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                                 b"transfer-encoding: chunked\r\n\r\n")
            self.slow_stream(events, delay)
            return
        out = [b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
               b"transfer-encoding: chunked\r\n\r\n"]
        for i, event in enumerate(events):
            if drop is not None and i >= drop:
                self.transport.write(b"".join(out))
                self.transport.close()
                return
            out.append(b"%x\r\n%s\r\n" % (len(event), event))
        out.append(b"0\r\n\r\n")
        self.transport.write(b"".join(out))


    def slow_stream(self, events: list[bytes], delay: float) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            self.upstream.streams_cut += 1
            return
        if not events:
            self.transport.write(b"0\r\n\r\n")
            return
        event = events[0]
        self.transport.write(b"%x\r\n%s\r\n" % (len(event), event))
        asyncio.get_running_loop().call_later(delay, self.slow_stream, events[1:], delay)


class KeywordRouter(Router):
    """A tiny learned-router stand-in for tests: win rate 0.9 when the prompt mentions one of
    its keywords, else 0.1; remembers every batch it scored. Saved and loaded as a real card."""

    kind = "keyword"
    params = ("keywords",)

    def __init__(self, keywords: tuple[str, ...] | list[str] = ("proof",)) -> None:
        super().__init__()
        self.keywords = list(keywords)
        self.batches: list[list[str]] = []

    def win_rate(self, prompts, strong=None, weak=None) -> np.ndarray:  # noqa: ANN001
        self.resolve_pair(strong, weak)
        self.batches.append(list(prompts))
        return np.array([0.9 if any(k in p for k in self.keywords) else 0.1 for p in prompts])


class ServerThread:
    """Runs an ASGI app under uvicorn on 127.0.0.1, on a random free port, in a thread."""

    def __init__(self, app: Any, **uvicorn_options: Any) -> None:
        self.app = app
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        options: dict[str, Any] = {}
        if hasattr(app, "config"):  # a SwitchServer: its connection limits, as `serve` runs it
            from switchllm.serving.connections import server_options

            options = server_options(app.config)[0]
        options.update(uvicorn_options)
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on",
                                **options)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        deadline = time.time() + 60  # routers warm up (load models) before serving
        while not self.server.started and time.time() < deadline:
            time.sleep(0.01)
        if not self.server.started:
            raise RuntimeError("the server did not start")
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def free_port() -> int:
    """A loopback port nothing listens on (for 'upstream down' cases)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class KeywordScoreRouter(Router):
    """A router that scores models, for route-group tests: on a prompt with one of its keywords
    the first model scores 2 and the others -2; on any other prompt every model scores 0. The
    right choice is known: hard prompts need the first model, the rest can go anywhere."""

    kind = "keyword_scores"
    params = ("keywords", "scored_models")

    def __init__(self, keywords: tuple[str, ...] | list[str] = ("proof",),
                 scored_models: tuple[str, ...] | list[str] = ()) -> None:
        super().__init__()
        self.keywords = list(keywords)
        self.scored_models = list(scored_models)
        self.models = list(scored_models)
        if len(self.models) >= 2:
            self.default_pair = (self.models[0], self.models[-1])

    def model_scores(self, prompts) -> np.ndarray:  # noqa: ANN001
        scores = np.zeros((len(prompts), len(self.models)))
        for i, prompt in enumerate(prompts):
            if any(k in prompt for k in self.keywords):
                scores[i] = -2.0
                scores[i, 0] = 2.0
        return scores

    def win_rate(self, prompts, strong=None, weak=None) -> np.ndarray:  # noqa: ANN001
        strong, weak = self.resolve_pair(strong, weak)
        s = self.model_scores(prompts)
        a, b = self.models.index(strong), self.models.index(weak)
        return 1.0 / (1.0 + np.exp(-(s[:, a] - s[:, b])))
