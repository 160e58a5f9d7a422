"""Calling upstream OpenAI-compatible endpoints: one pooled HTTP client, timeouts, retries
with backoff on 429/5xx/connection errors, and fallback to the other model when the chosen one
fails, for streamed requests too as long as no token has reached the caller yet.

Upstream API keys live only in request headers built here; error messages that reach clients or
logs are redacted of them.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import math
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from switchllm.serving.config import ModelSpec
from switchllm.serving.http_pool import (
    DEFAULT_MAX_RESPONSE_BYTES,
    HTTPPool,
    HTTPPoolError,
    ProtocolError,
    ReadTimeout,
    StreamResponse,
    Target,
)

_KEY_LIKE = re.compile(r"[\w\-.*]{6,}")  # a word that could hold a (masked) key
_MASK = re.compile(r"\*+|\.\.\.")  # how providers mask the middle of a key
CHAT_PATH = "/chat/completions"
# Responses API stream events that end a stream (it sends no [DONE]).
RESPONSE_END_EVENTS = frozenset({"response.completed", "response.incomplete", "response.failed"})
RETRYABLE_STATUS = frozenset({408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 523, 524, 529})
MAX_RETRY_WAIT_S = 2.0  # the longest Retry-After a request waits out before retrying a model


class UpstreamError(Exception):
    """An upstream call failed. `status` is what the client should see; `fallback` says whether
    trying the other model may help (not for a request the upstream rejected as malformed)."""

    def __init__(
        self, status: int, message: str, *, code: str = "upstream_error", fallback: bool = True,
        retry: bool = False, body: dict[str, Any] | None = None, retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.fallback = fallback
        self.retry = retry
        self.body = body  # the upstream's own (redacted) error body, passed on for 4xx
        self.retry_after = retry_after


@dataclass
class Completion:
    model: str  # served model name that answered
    payload: dict[str, Any]
    fell_back: bool
    attempts: int
    upstream_s: float


@dataclass
class StreamState:
    """Accumulates what a stream tells us about usage while it is relayed."""

    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    content_chunks: int = 0
    ended: bool = False  # a /responses stream's final event arrived
    finished: bool = False  # a choice reported its finish_reason

    def observe(self, event: dict[str, Any]) -> None:
        usage = event.get("usage")
        if isinstance(usage, dict):
            self.prompt_tokens = token_count(usage.get("prompt_tokens"))
            self.completion_tokens = token_count(usage.get("completion_tokens"))
        for choice in event.get("choices") or ():
            if not isinstance(choice, dict):
                continue
            delta = choice.get("delta")
            if isinstance(delta, dict) and (delta.get("content") or delta.get("tool_calls")):
                self.content_chunks += 1
            elif choice.get("text"):  # /completions streams
                self.content_chunks += 1
            if choice.get("finish_reason"):
                self.finished = True
        kind = event.get("type")
        if isinstance(kind, str) and kind.startswith("response."):  # /responses streams
            if kind.endswith(".delta"):
                self.content_chunks += 1
            self.ended = self.ended or kind in RESPONSE_END_EVENTS
            response = event.get("response")
            usage = response.get("usage") if isinstance(response, dict) else None
            if isinstance(usage, dict):
                self.prompt_tokens = token_count(usage.get("input_tokens"))
                self.completion_tokens = token_count(usage.get("output_tokens"))


@dataclass
class OpenStream:
    """A started upstream stream whose first token has arrived (or which ended cleanly)."""

    model: str
    fell_back: bool
    attempts: int
    head: list[bytes]  # SSE events already read and rewritten, to send first
    rest: AsyncIterator[bytes]
    state: StreamState = field(default_factory=StreamState)
    first_token_s: float = 0.0


def token_count(value: Any) -> int | None:
    """A usage figure as the upstream reported it, or None when it is not a count (a string,
    a negative or non-finite number): bad usage must not break the answer or its log row."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return int(value) if math.isfinite(value) and value >= 0 else None


def _malformed(payload: dict[str, Any]) -> str | None:
    """What makes an upstream answer unusable for a client, or None."""
    choices = payload.get("choices")
    if choices is not None and not (isinstance(choices, list)
                                    and all(isinstance(c, dict) for c in choices)):
        return "'choices' that is not a list of objects"
    return None


class Upstreams:
    def __init__(
        self,
        models: dict[str, ModelSpec],
        *,
        timeout: float = 60.0,
        connect_timeout: float = 5.0,
        retries: int = 2,
        backoff: float = 0.05,
        on_retry: Callable[[str], None] | None = None,
        max_retry_after: float = MAX_RETRY_WAIT_S,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
    ) -> None:
        self.models = models
        # the longest Retry-After a request waits out on the same model: short for serving (a
        # caller is waiting; longer ones go to the other model), long for batch labelling
        self.max_retry_after = max_retry_after
        # model -> monotonic time until which it asked not to be called (Retry-After)
        self._cooldown: dict[str, float] = {}
        self.retries = max(0, retries)
        self.backoff = backoff
        self.on_retry = on_retry
        self.timeout = timeout
        self.client = HTTPPool(connect_timeout=connect_timeout, read_timeout=timeout,
                               max_response_bytes=max_response_bytes)
        self._targets: dict[str, tuple[Target, dict[str, str]]] = {}
        self._other_targets: dict[tuple[str, str], Target] = {}  # (model, path) beyond chat
        self._secrets: list[str] = []
        for name, spec in models.items():
            headers = {"content-type": "application/json", "accept": "application/json"}
            key = spec.resolve_key()
            if key:
                headers["authorization"] = f"Bearer {key}"
                self._secrets.append(key)
            url = spec.base_url.rstrip("/") + "/chat/completions"
            try:
                self._targets[name] = (Target.parse(url), headers)
            except ValueError:
                raise ValueError(f"model {name!r}: base_url {spec.base_url!r} is not an "
                                 "http(s) URL") from None

    async def aclose(self) -> None:
        await self.client.aclose()

    def _target(self, model: str, path: str) -> tuple[Target, dict[str, str]]:
        """The URL and headers for `path` (/chat/completions, /embeddings, ...) of `model`."""
        url, headers = self._targets[model]
        if path == CHAT_PATH:
            return url, headers
        key = (model, path)
        if key not in self._other_targets:
            self._other_targets[key] = Target.parse(
                self.models[model].base_url.rstrip("/") + path)
        return self._other_targets[key], headers

    # ---- secrets ------------------------------------------------------------------------
    def redact(self, text: str) -> str:
        """`text` without our upstream keys, whole or in part: providers echo a masked key
        ("Incorrect API key provided: sk-proj-abcd****wxyz"), whose fragments are secret too."""
        if not self._secrets:
            return text
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return _KEY_LIKE.sub(lambda m: self._redact_token(m.group()), text)

    def _redact_token(self, token: str) -> str:
        parts = [p.strip(".") for p in _MASK.split(token) if len(p.strip(".")) >= 4]
        masked = len(parts) < len(_MASK.split(token)) or "*" in token
        for secret in self._secrets:
            for part in parts:
                # a masked key shows its first and last characters; a long run anywhere is a leak
                edge = secret.startswith(part) or secret.endswith(part)
                if (edge and (masked or len(part) >= 6)) or (len(part) >= 8 and part in secret):
                    return "[redacted]"
        return token

    def _redact_body(self, body: Any) -> Any:
        if not self._secrets:
            return body
        return json.loads(self.redact(json.dumps(body)))

    # ---- requests -----------------------------------------------------------------------
    def _content(self, model: str, body: dict[str, Any]) -> bytes:
        sent = dict(body)
        sent["model"] = self.models[model].sent_name
        return json.dumps(sent, ensure_ascii=False).encode()

    def _status_error(
        self, model: str, status: int, raw: bytes, headers: dict[str, str]
    ) -> UpstreamError:
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        detail = ""
        if isinstance(body, dict) and isinstance(body.get("error"), dict):
            detail = str(body["error"].get("message", ""))
        elif raw:
            detail = raw[:200].decode("utf-8", "replace")
        detail = self.redact(detail)
        if status in RETRYABLE_STATUS:
            retry_after = _retry_after(headers.get("retry-after"))
            if retry_after:
                # Honour it for every request, not just this one: no call until it has passed.
                self._cooldown[model] = time.monotonic() + retry_after
            code = "rate_limited" if status == 429 else "upstream_error"
            return UpstreamError(
                429 if status == 429 else 502,
                f"upstream model {model!r} returned HTTP {status}: {detail}".rstrip(": "),
                code=code, retry=retry_after is None or retry_after <= self.max_retry_after,
                retry_after=retry_after,
            )
        if status in (401, 403):
            # Our credentials, not the caller's request: the other model may still answer.
            return UpstreamError(
                502, f"upstream model {model!r} rejected the server's credentials (HTTP {status})",
                code="upstream_auth_error",
            )
        # Any other 4xx: the upstream judged the request itself bad; say what it said.
        return UpstreamError(
            status if 400 <= status < 500 else 502,
            f"upstream model {model!r} rejected the request (HTTP {status}): {detail}",
            code="upstream_rejected", fallback=False,
            body=self._redact_body(body) if isinstance(body, dict) else None,
        )

    def _transport_error(self, model: str, exc: Exception) -> UpstreamError:
        if isinstance(exc, ReadTimeout):
            # A hung upstream: retrying it would only double the wait; go to the other model.
            return UpstreamError(
                504, f"upstream model {model!r} timed out", code="upstream_timeout"
            )
        return UpstreamError(
            502, f"cannot reach upstream model {model!r} ({type(exc).__name__})",
            code="upstream_unreachable", retry=True,
        )

    def _cooling(self, model: str) -> UpstreamError | None:
        """The error to give instead of calling `model` while its Retry-After lasts."""
        until = self._cooldown.get(model)
        if until is None:
            return None
        left = until - time.monotonic()
        if left <= 0:
            del self._cooldown[model]
            return None
        return UpstreamError(429, f"upstream model {model!r} is rate-limited for another "
                             f"{left:.1f} s", code="rate_limited", retry_after=left)

    async def _backoff(self, model: str, attempt: int, error: UpstreamError) -> None:
        if self.on_retry:
            self.on_retry(model)
        delay = self.backoff * (2**attempt) * (0.5 + random.random())
        if error.retry_after is not None:
            delay = max(delay, error.retry_after)
        await asyncio.sleep(delay)

    async def complete_one(
        self, model: str, body: dict[str, Any], path: str = CHAT_PATH
    ) -> tuple[dict[str, Any], int]:
        url, headers = self._target(model, path)
        content = self._content(model, body)
        error: UpstreamError | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                assert error is not None
                await self._backoff(model, attempt - 1, error)
            try:
                # the whole attempt, not each read: an upstream dripping bytes is a hung one
                async with asyncio.timeout(self.timeout):
                    response = await self.client.request("POST", url, headers, content)
            except TimeoutError:
                error = self._transport_error(model, ReadTimeout("attempt deadline"))
            except HTTPPoolError as exc:
                error = self._transport_error(model, exc)
            else:
                if response.status == 200:
                    try:
                        payload = json.loads(response.body)
                    except ValueError:
                        payload = None
                    problem = ("a response that is not a JSON object"
                               if not isinstance(payload, dict) else _malformed(payload))
                    if problem is None:
                        return payload, attempt + 1
                    error = UpstreamError(
                        502, f"upstream model {model!r} sent {problem}", retry=True,
                    )
                else:
                    error = self._status_error(
                        model, response.status, response.body, response.headers
                    )
            if not error.retry:
                break
        assert error is not None
        raise error

    async def complete(
        self, order: Sequence[str], body: dict[str, Any], path: str = CHAT_PATH
    ) -> Completion:
        """The first model in `order` that answers; later ones only if earlier ones fail."""
        started = time.perf_counter()
        attempts = 0
        error: UpstreamError | None = None
        for i, model in enumerate(order):
            cooling = self._cooling(model)
            if cooling is not None:
                error = cooling
                continue
            try:
                payload, used = await self.complete_one(model, body, path)
            except UpstreamError as exc:
                attempts += self.retries + 1
                error = exc
                if not exc.fallback:
                    break
                continue
            payload["model"] = model
            return Completion(model, payload, i > 0, attempts + used, time.perf_counter() - started)
        assert error is not None
        raise error

    # ---- streaming ----------------------------------------------------------------------
    async def open_stream(
        self, order: Sequence[str], body: dict[str, Any], path: str = CHAT_PATH
    ) -> OpenStream:
        """Start a stream on the first model in `order` that delivers a first token, retrying
        and falling back on failures before it; the caller relays `head` then `rest`."""
        started = time.perf_counter()
        error: UpstreamError | None = None
        attempts = 0
        for i, model in enumerate(order):
            cooling = self._cooling(model)
            if cooling is not None:
                error = cooling
                continue
            url, headers = self._target(model, path)
            content = self._content(model, body)
            for attempt in range(self.retries + 1):
                if attempt:
                    assert error is not None
                    await self._backoff(model, attempt - 1, error)
                attempts += 1
                try:
                    opened = await self._start(model, url, headers, content)
                except UpstreamError as exc:
                    error = exc
                    if not exc.retry:
                        break
                    continue
                opened.fell_back = i > 0
                opened.attempts = attempts
                opened.first_token_s = time.perf_counter() - started
                return opened
            assert error is not None
            if not error.fallback:
                break
        assert error is not None
        raise error

    async def _start(
        self, model: str, url: Target, headers: dict[str, str], content: bytes
    ) -> OpenStream:
        """Open a stream: its first token (or clean end) must come within `timeout`, however
        the upstream paces its bytes; after that only each read is timed (generations are long)."""
        try:
            async with asyncio.timeout(self.timeout):
                return await self._open(model, url, headers, content)
        except TimeoutError:
            raise self._transport_error(model, ReadTimeout("first-token deadline")) from None

    async def _open(
        self, model: str, url: Target, headers: dict[str, str], content: bytes
    ) -> OpenStream:
        try:
            response = await self.client.stream(
                "POST", url, {**headers, "accept": "text/event-stream"}, content
            )
        except HTTPPoolError as exc:
            raise self._transport_error(model, exc) from None
        if response.status != 200:
            try:
                raw = await response.aread()
            except HTTPPoolError:
                raw = b""
            await response.aclose()
            raise self._status_error(model, response.status, raw, response.headers)
        state = StreamState()
        events = _relay(response, model, state, self.redact)
        head: list[bytes] = []
        try:
            async for event in events:
                head.append(event)
                if state.content_chunks or state.ended or b"data: [DONE]\n\n" in event:
                    break
        except UpstreamError:
            await response.aclose()
            raise
        except HTTPPoolError as exc:
            await response.aclose()
            raise UpstreamError(
                502, f"upstream model {model!r} dropped the stream before the first token "
                f"({type(exc).__name__})", code="upstream_stream_error", retry=True,
            ) from None
        if not head:
            await response.aclose()
            raise UpstreamError(
                502, f"upstream model {model!r} ended the stream without any event",
                code="upstream_stream_error", retry=True,
            )
        return OpenStream(model, False, 0, head, events, state)


async def _relay(
    response: StreamResponse, model: str, state: StreamState, redact: Callable[[str], str]
) -> AsyncIterator[bytes]:
    """Upstream SSE -> SSE events with `model` set to the served model name. Yields, per
    network read, every complete event it brought (one write to the client, not one per
    event)."""
    buffer = b""
    done = False
    try:
        async for chunk in response.aiter_raw():
            buffer += chunk
            if b"\r" in buffer:
                buffer = buffer.replace(b"\r\n", b"\n")
            if b"\n\n" not in buffer:
                if len(buffer) > response.max_bytes:  # one event without end: not SSE
                    raise ProtocolError(f"stream event over {response.max_bytes} bytes")
                continue
            *raw_events, buffer = buffer.split(b"\n\n")
            events = [_rewrite_event(raw, model, state, redact) for raw in raw_events]
            block = b"".join(e for e in events if e is not None)
            if block:
                done = done or b"data: [DONE]\n\n" in block
                yield block
        if buffer.strip():
            event = _rewrite_event(buffer, model, state, redact)
            if event is not None:
                done = done or b"data: [DONE]\n\n" in event
                yield event
    finally:
        await response.aclose()
    if not done and state.finished and not state.ended:
        # Some upstreams end a complete stream without the sentinel; OpenAI clients expect it.
        yield b"data: [DONE]\n\n"
    elif not done and not state.ended:
        raise UpstreamError(
            502, f"upstream model {model!r} ended the stream without [DONE]",
            code="upstream_stream_error", retry=True,
        )


def _rewrite_event(
    raw: bytes, model: str, state: StreamState, redact: Callable[[str], str]
) -> bytes | None:
    lines = raw.split(b"\n")
    data_lines = [line[5:].lstrip() for line in lines if line.startswith(b"data:")]
    # Responses API streams name each event (`event: response.output_text.delta`): keep it.
    names = [line for line in lines if line.startswith(b"event:")]
    if not data_lines:
        return None  # comments / keep-alives
    data = b"\n".join(data_lines)
    if data.strip() == b"[DONE]":
        return b"data: [DONE]\n\n"
    try:
        event = json.loads(data)
    except ValueError:
        raise UpstreamError(
            502, f"upstream model {model!r} sent a stream event that is not JSON",
            code="upstream_stream_error", retry=True,
        ) from None
    if isinstance(event, dict):
        if "error" in event and "choices" not in event:
            message = event["error"].get("message") if isinstance(event["error"], dict) else ""
            raise UpstreamError(
                502, f"upstream model {model!r} reported an error mid-stream: "
                f"{redact(str(message))}", code="upstream_stream_error", retry=True,
            )
        problem = _malformed(event)
        if problem is not None:
            raise UpstreamError(502, f"upstream model {model!r} sent a stream event with "
                                f"{problem}", code="upstream_stream_error", retry=True)
        if isinstance(event.get("response"), dict):
            event["response"]["model"] = model
        else:
            event["model"] = model
        state.observe(event)
    data = json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()
    return (names[0] + b"\n" if names else b"") + b"data: " + data + b"\n\n"


def _retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header: a number, or an HTTP date."""
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        seconds = when.timestamp() - time.time()
    return max(seconds, 0.0) if math.isfinite(seconds) else None
