"""The OpenAI-compatible routing server: an ASGI app run by uvicorn, its paths matched by
Starlette's router, its handlers ASGI-level (a stream relays upstream events to `send` as they
arrive and watches `receive` for the client hanging up).

Endpoints (`SwitchServer._routes`): POST /v1/chat/completions (streaming and not), POST
/v1/feedback, GET /v1/models, GET /health, GET /metrics, GET /v1/stats and the page that shows
them (GET /dashboard), GET /openapi.json (serving.openapi describes them all), and the
forwarded OpenAI endpoints. Every
chat response carries `x-switchllm-request-id`, the id that feedback refers to. The request body
is forwarded untouched except for `model`; the model that answered appears in the response
`model` field, in every stream chunk and in `x-switchllm-*` response headers together with the
router's win rate.

The parts were chosen by measurement (`bench/server.py --parts`, docs/SERVING.md, Performance;
issue 7's rule: a well-kept part is taken when it costs at most 0.3 ms p50 at concurrency 1 and
10% req/s at 64 clients). Against the hand-written if/elif dispatch it replaced, Starlette's
router costs about 9 us of CPU per request, 2-3% of the 360-550 us the server spends on a
proxied request. Starlette endpoints that take a `Request` and return a `Response` cost about
25 us (and a stream needs the raw `receive` to see the client leave); FastAPI's about 71 us
(15-20%, beyond the rule: it is not a dependency).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hmac
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from starlette.routing import Route, Router

from switchllm.serving import dashboard
from switchllm.serving.config import (
    ModelNameError,
    ServingConfig,
    content_text,
    parse_router_model,
    prompt_text,
)
from switchllm.serving.decision_log import DecisionLog, DecisionRecord
from switchllm.serving.feedback import (
    FeedbackError,
    RecentRequests,
    ServedRequest,
    feedback_record,
    parse_feedback_body,
)
from switchllm.serving.groups import (
    GroupDecision,
    GroupRouting,
    request_input_tokens,
    router_of,
)
from switchllm.serving.http_pool import HTTPPoolError
from switchllm.serving.metrics import ServerMetrics
from switchllm.serving.openapi import OPENAPI
from switchllm.serving.request_models import RequestShapeError, check_chat_request
from switchllm.serving.routing import AsyncRouting, Decision, RouterSet, routable_text
from switchllm.serving.stats import (
    StatsQuery,
    StatsQueryError,
    StatsReader,
    StatsReadError,
    parse_stats_query,
)
from switchllm.serving.upstream import (
    OpenStream,
    StreamState,
    UpstreamError,
    Upstreams,
    token_count,
)

Scope = MutableMapping[str, Any]
AnyDecision = Decision | GroupDecision  # a pair decision or a route group's
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
T = TypeVar("T")
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
Handler = Callable[[Scope, Receive, Send], Awaitable[None]]

log = logging.getLogger("switchllm.serving.server")

JSON_HEADERS = [(b"content-type", b"application/json")]
NO_STORE = [(b"cache-control", b"no-store")]
SSE_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
# Other OpenAI endpoints: path -> (upstream path, the field the request must carry, routed?)
FORWARDED: dict[str, tuple[str, str, bool]] = {}
for _path, _target in (("/embeddings", ("/embeddings", "input", False)),
                       ("/completions", ("/completions", "prompt", True)),
                       ("/responses", ("/responses", "input", True))):
    FORWARDED[_path] = FORWARDED["/v1" + _path] = _target
API_PATHS = frozenset(CHAT_PATHS) | frozenset(FORWARDED)


class HTTPError(Exception):
    """An error answered to the client in OpenAI's format."""

    def __init__(
        self, status: int, message: str, *, type_: str = "invalid_request_error",
        code: str | None = None, param: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = (
            status, message, type_, code, param,
        )

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message, "type": self.type, "param": self.param, "code": self.code
            }
        }


class ClientGone(Exception):
    pass


class _Endpoint:
    """A route's ASGI app: Starlette calls an endpoint that is not a function with the raw
    scope, receive and send, and the handler streams to `send` itself."""

    def __init__(self, server: SwitchServer, method: str | None, auth: bool,
                 handler: Handler) -> None:
        self.server, self.method, self.auth, self.handler = server, method, auth, handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.server._serve(scope, receive, send, self.method, self.auth, self.handler)


def error_body(message: str, type_: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


class SwitchServer:
    """The ASGI application. Build with a ServingConfig; `await app.aclose()` (or the ASGI
    lifespan shutdown) releases the upstream pool and flushes the decision log."""

    def __init__(
        self, config: ServingConfig, routers: RouterSet | None = None,
        routing: Callable[[RouterSet], AsyncRouting] | None = None,
    ) -> None:
        """`routing` builds the win-rate front end for the loaded routers (default: routers
        computed in this process; Ray Serve: router replicas elsewhere)."""
        self.config = config
        self.routers = routers or RouterSet(config.routers)
        self.routing = routing(self.routers) if routing is not None else AsyncRouting(
            self.routers, config.strong_model, config.weak_model, config.batch_window_ms / 1000,
            config.router_threads, config.max_prompt_chars,
        )
        # route groups: a config error (unscorable model, unknown router) refuses to start
        self.groups = GroupRouting(config.routes, self.routers, config.models,
                                   config.log_location)
        self._best_cost_total = 0.0
        self._group_cost_total = 0.0
        self.metrics = ServerMetrics()
        self.log = (
            DecisionLog(config.log_location, log_prompts=config.log_prompts,
                        flush_s=config.log_flush_ms / 1000, max_pending=config.log_buffer_rows)
            if config.log_location
            else None
        )
        self._api_keys = [k.encode() for k in config.api_keys]
        self._allowed_hosts = config.served_host_names()
        self._upstreams: Upstreams | None = None
        self._cost_total = 0.0
        self._strong_cost_total = 0.0
        self._recent = RecentRequests()
        self._log_observer: asyncio.Task[None] | None = None
        self.stats = (StatsReader.for_location(config.log_location) if config.log_location
                      else None)
        # Starlette's router only matches paths: each endpoint checks its own method, so that a
        # wrong one gets an OpenAI-style 405 (a Route's `methods` would answer in plain text),
        # and slashes are not redirected (an API client would re-send its POST elsewhere).
        self._router = Router(self._routes(), redirect_slashes=False,
                              default=_Endpoint(self, None, False, self._not_found))

    # ---- lifecycle ------------------------------------------------------------------------
    @property
    def upstreams(self) -> Upstreams:
        if self._upstreams is None:
            c = self.config
            self._upstreams = Upstreams(
                c.models, timeout=c.timeout, connect_timeout=c.connect_timeout,
                retries=c.retries, backoff=c.backoff,
                on_retry=lambda model: self.metrics.retries.labels(model).inc(),
                max_response_bytes=c.max_response_bytes,
            )
        return self._upstreams

    async def _observe_log_forever(self, every_s: float = 1.0) -> None:
        while self.log is not None:
            self.metrics.observe_log(self.log.status())
            await asyncio.sleep(every_s)

    async def aclose(self) -> None:
        if self._log_observer is not None:
            self._log_observer.cancel()
            self._log_observer = None
        if self._upstreams is not None:
            await self._upstreams.aclose()
            self._upstreams = None
        self.routing.close()
        if self.stats is not None:
            self.stats.close()
        if self.log is not None:
            self.log.close()

    # ---- ASGI -----------------------------------------------------------------------------
    @property
    def paths(self) -> list[str]:
        """Every path served, as Starlette writes it ("/v1/models/{model_id:path}")."""
        return [route.path for route in self._router.routes]

    def _routes(self) -> list[Route]:
        """Every endpoint: path, the one method it answers, whether it needs a client key, and
        its handler (an ASGI-level coroutine: streams watch `receive` for a disconnect)."""
        def api(path: str, method: str, handler: Handler, auth: bool = True) -> Route:
            return Route(path, _Endpoint(self, method, auth, handler))

        forwarded = [api(path, "POST", functools.partial(self._forward_endpoint, target))
                     for path, target in FORWARDED.items()]
        return [
            *(api(path, "POST", self._chat) for path in CHAT_PATHS),
            *forwarded,
            api("/v1/models/{model_id:path}", "GET", self._model_endpoint),
            api("/models/{model_id:path}", "GET", self._model_endpoint),
            api("/v1/feedback", "POST", self._feedback),
            api("/health", "GET", self._health_endpoint, auth=False),
            api("/openapi.json", "GET", self._openapi_endpoint, auth=False),
            api("/v1/models", "GET", self._models_endpoint),
            api("/models", "GET", self._models_endpoint),
            api("/metrics", "GET", self._metrics_endpoint),
            api("/v1/stats", "GET", self._stats_endpoint),
            # static, no data: the page asks for the key and sends it to /v1/stats itself
            *(api(path, "GET", self._asset_endpoint, auth=False) for path in dashboard.ASSETS),
        ]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        await self._router(scope, receive, send)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, method: str | None,
                     auth: bool, handler: Handler) -> None:
        """One request to `handler`: the browser checks, the method, the client key, and every
        error answered in OpenAI's format (never a traceback to the client)."""
        path: str = scope["path"]
        try:
            self._check_origin(scope, scope["method"])
            if method is not None:
                _require_method(path, scope["method"], method)
            if auth:
                self._authorize(scope)
            await handler(scope, receive, send)
        except HTTPError as exc:
            self._rejected(path, exc.status)
            await _send_json(send, exc.status, exc.body())
        except ClientGone:
            return
        except Exception:
            # The server log keeps the traceback (it holds no keys: keys live only in upstream
            # request headers, which exceptions do not carry).
            log.exception("internal error on %s %s", scope["method"], path)
            try:
                await _send_json(
                    send, 500, error_body("internal server error", "server_error", "internal_error")
                )
            except Exception:
                pass

    async def _not_found(self, scope: Scope, receive: Receive, send: Send) -> None:
        raise HTTPError(404, f"no endpoint {scope['method']} {scope['path']}", code="not_found")

    async def _forward_endpoint(self, target: tuple[str, str, bool], scope: Scope,
                                receive: Receive, send: Send) -> None:
        await self._forward(scope, receive, send, *target)

    async def _model_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, self._model(scope["path_params"]["model_id"]))

    async def _health_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, self._health(scope))

    async def _openapi_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, OPENAPI)

    async def _models_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, self._models())

    async def _metrics_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.log is not None:
            self.metrics.observe_log(self.log.status())
        content_type = self.metrics.content_type.encode()
        await _send(send, 200, self.metrics.render(), [(b"content-type", content_type)])

    async def _stats_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send_json(send, 200, await self._stats(scope), NO_STORE)

    async def _asset_endpoint(self, scope: Scope, receive: Receive, send: Send) -> None:
        await _send(send, 200, *dashboard.asset(scope["path"]))  # type: ignore[misc]

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _ = self.upstreams
                try:
                    await self.routing.warm_up()
                except Exception as exc:  # a router that cannot run: refuse to start
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                if self.stats is not None:  # aggregate the log's past in the background
                    asyncio.get_running_loop().run_in_executor(None, self._warm_stats)
                if self.log is not None and self.metrics.shared:
                    # a scrape reaches one worker: each keeps its own log gauges current
                    self._log_observer = asyncio.create_task(self._observe_log_forever())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    def _check_origin(self, scope: Scope, method: str) -> None:
        """Browser attacks on a keyless local server: a page on another site may POST to it
        (CSRF, as a `text/plain` "simple request" that needs no CORS preflight), or reach it
        under its own name through DNS rebinding. JSON-only bodies stop the first, the Host
        allow-list the second."""
        headers = dict(scope["headers"])
        if self._allowed_hosts is not None:
            host = headers.get(b"host", b"").decode("latin-1").lower()
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name.strip("[]") not in self._allowed_hosts:
                raise HTTPError(403, f"Host {host!r} is not served here (allowed_hosts: "
                                f"{', '.join(sorted(self._allowed_hosts))})",
                                code="host_not_allowed")
        path = scope["path"]
        if method == "POST" and (path in CHAT_PATHS or path in FORWARDED
                                 or path == "/v1/feedback"):
            kind = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
            if kind != b"application/json":
                raise HTTPError(415, "send the request body as JSON with "
                                "Content-Type: application/json", code="unsupported_media_type")

    def _authorize(self, scope: Scope) -> None:
        if not self._api_keys:
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"authorization":
                if value[:7].lower() == b"bearer ":
                    given = value[7:].strip()
                break
        # Compare against every key (no early exit) so timing says nothing about which matched.
        ok = False
        for key in self._api_keys:
            ok |= hmac.compare_digest(given, key)
        if not ok:
            raise HTTPError(
                401, "missing or invalid API key (send Authorization: Bearer <key>)",
                type_="authentication_error", code="invalid_api_key",
            )

    def _health(self, scope: Scope) -> dict[str, Any]:
        """RouteLLM's answer, `{"status": "online"}`, to anyone (health checks send no key);
        what is served only to a client with a valid key, where keys are required."""
        health: dict[str, Any] = {"status": "online"}
        if not self._api_keys:
            return health
        try:
            self._authorize(scope)
        except HTTPError:
            return health
        return {
            **health,
            "routers": list(self.routers.routers),
            "strong_model": self.config.strong_model,
            "weak_model": self.config.weak_model,
            "pid": os.getpid(),  # which process answered (`serve --workers N`)
        }

    def _models(self) -> dict[str, Any]:
        data = [
            {"id": f"router-{name}-s0.5", "object": "model", "created": 0, "owned_by": "switchllm",
             "description": f"router {name}: use router-{name}-<threshold> or "
             f"router-{name}-s<strong share>"}
            for name in self.routers.routers
        ]
        data += [
            {"id": name, "object": "model", "created": 0, "owned_by": "switchllm",
             "description": f"route group: {group.router} chooses among "
             f"{', '.join(group.models)} ({group.objective.describe()})"}
            for name, group in self.config.routes.items()
        ]
        data += [
            {"id": name, "object": "model", "created": 0, "owned_by": "upstream"}
            for name in self.config.models
        ]
        return {"object": "list", "data": data}

    def _model(self, model_id: str) -> dict[str, Any]:
        """GET /v1/models/{id}: an upstream model, or any valid router model name."""
        for entry in self._models()["data"]:
            if entry["id"] == model_id:
                return entry
        try:
            route = parse_router_model(model_id)
            if route is not None:
                self.routers.get(route.router)
                return {"id": model_id, "object": "model", "created": 0,
                        "owned_by": "switchllm"}
        except ModelNameError:
            pass
        raise HTTPError(404, f"model {model_id!r} is not served here", code="model_not_found",
                        param="model")

    def _rejected(self, path: str, status: int) -> None:
        """A request answered with an error before reaching an upstream: counted in /metrics
        and, for API calls, in the decision log (so `switchllm stats` shows it)."""
        self.metrics.requests.labels("(rejected)", "none", str(status)).inc()
        if self.log is not None and path in API_PATHS:
            self.log.record(DecisionRecord(
                ts=time.time(), router="(rejected)", threshold=None, win_rate=None, model=None,
                routed_model=None, strong_model=self.config.strong_model, fallback=False,
                status=status, stream=False, latency_ms=0.0, routing_ms=None,
                prompt_tokens=None, completion_tokens=None, cost_usd=None,
                strong_cost_usd=None,
            ))

    # ---- embeddings, completions, responses -----------------------------------------------
    async def _forward(self, scope: Scope, receive: Receive, send: Send, upstream_path: str,
                       required: str, routed: bool) -> None:
        """Pass a request through to a configured model (or, where `routed`, to the model a
        router-<name>-<threshold> name picks, on the request's text), streaming included."""
        started = time.perf_counter()
        payload = _parse_object(await _read_body(scope, receive, self.config.max_body_bytes))
        model_name = payload.get("model")
        if not isinstance(model_name, str) or not model_name:
            raise HTTPError(400, "'model' is required", param="model", code="missing_required")
        if payload.get(required) in (None, "", []):
            raise HTTPError(400, f"{required!r} is required", param=required,
                            code="missing_required")
        text = _request_text(payload.get(required))
        decision, chosen, warning = await self._choose(model_name, text, routed)
        other = self.config.other_model(chosen)
        order = [chosen, other] if other else [chosen]
        headers = _routing_headers(decision)
        if warning:
            headers.append((b"x-switchllm-warning", warning.encode("ascii", "replace")))
        if decision is not None:
            self.metrics.routing_seconds.labels(decision.router).observe(decision.routing_s)
        if payload.get("stream") and upstream_path != "/embeddings":
            await self._chat_stream(receive, send, payload, order, decision, headers, started,
                                    text, path=upstream_path)
            return
        await self._complete(receive, send, payload, order, decision, chosen, headers, started,
                             text, upstream_path)

    async def _choose(self, model_name: str, text: str, routed: bool
                      ) -> tuple[Decision | None, str, str | None]:
        """(routing decision or None, the model to call, threshold warning) for `model_name`."""
        try:
            route = parse_router_model(model_name)
            if route is not None and routed:
                threshold, warning = self.routers.resolve(route.router, route)
                decision = await self.routing.decide(route.router, threshold, text)
                return decision, decision.model, warning
            if route is not None:
                raise ModelNameError(
                    f"this endpoint is not routed: ask for one of {', '.join(self.config.models)}")
            if model_name in self.config.models:
                return None, model_name, None
            raise ModelNameError(
                f"model {model_name!r} is not served here; ask for one of: "
                f"{', '.join(self.config.models)}"
                + (" or router-<router>-<threshold>" if routed else ""),
                status=404, code="model_not_found",
            )
        except ModelNameError as exc:
            raise HTTPError(exc.status, str(exc), code=exc.code, param="model") from None

    # ---- chat completions -----------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        payload = _parse_request(await _read_body(scope, receive, self.config.max_body_bytes))
        model_name = payload["model"]
        stream = bool(payload.get("stream"))
        text = prompt_text(payload["messages"])
        decision: AnyDecision | None = None
        order: list[str] | None = None
        warning: str | None = None
        try:
            route = parse_router_model(model_name)
            chooser = self.groups.resolve(model_name) if route is None else None
            if chooser is not None:
                router_name = router_of(chooser, self.routers)
                decision = await self.groups.decide(
                    model_name, chooser, router_name,
                    routable_text(text, self.config.max_prompt_chars),
                    request_input_tokens(payload["messages"]),
                    self.routing.batchers[router_name])
                chosen = decision.model
                order = list(decision.order)  # fallback: the next model by predicted utility
            elif route is not None:
                threshold, warning = self.routers.resolve(route.router, route)
                decision = await self.routing.decide(route.router, threshold, text)
                chosen = decision.model
            elif model_name in self.config.models:
                chosen = model_name
            else:
                raise ModelNameError(
                    f"model {model_name!r} is not served here; ask for "
                    f"router-<router>-<threshold> (routers: {', '.join(self.routers.routers)}) "
                    f"or one of: {', '.join(self.config.models)}",
                    status=404, code="model_not_found",
                )
        except ModelNameError as exc:
            raise HTTPError(exc.status, str(exc), code=exc.code, param="model") from None
        if order is None:
            other = self.config.other_model(chosen)
            order = [chosen, other] if other else [chosen]
        router_label = decision.router if decision else "none"
        if decision is not None:
            self.metrics.routing_seconds.labels(router_label).observe(decision.routing_s)
        request_id = uuid.uuid4().hex
        headers = [*_routing_headers(decision), (b"x-switchllm-request-id", request_id.encode())]
        if warning:
            headers.append((b"x-switchllm-warning", warning.encode("ascii", "replace")))
        if stream:
            await self._chat_stream(
                receive, send, payload, order, decision, headers, started, text,
                request_id=request_id,
            )
            return
        await self._complete(receive, send, payload, order, decision, chosen, headers, started,
                             text, request_id=request_id)

    async def _complete(
        self, receive: Receive, send: Send, payload: dict, order: list[str],
        decision: AnyDecision | None, chosen: str, headers: list[tuple[bytes, bytes]],
        started: float, text: str, path: str = "/chat/completions", request_id: str | None = None,
    ) -> None:
        """One non-streamed upstream answer (with fallback along `order`), sent and logged."""
        try:
            result = await _unless_gone(receive, self.upstreams.complete(order, payload, path))
        except ClientGone:
            # Nobody to answer: no fallback call is made for them, and no answer is logged.
            self._finish(decision, chosen, chosen, False, 499, False, started, None, text,
                         request_id)
            return
        except UpstreamError as exc:
            self._finish(decision, chosen, chosen, False, exc.status, False, started, None, text,
                         request_id)
            await _send_json(send, exc.status, _upstream_error_body(exc),
                             headers + _retry_after_header(exc))
            return
        self.metrics.upstream_seconds.labels(result.model).observe(result.upstream_s)
        usage = result.payload.get("usage")
        usage = usage if isinstance(usage, dict) else {}
        # chat and completions say prompt/completion tokens; the Responses API input/output
        tokens = (token_count(usage.get("prompt_tokens", usage.get("input_tokens"))),
                  token_count(usage.get("completion_tokens", usage.get("output_tokens"))))
        headers = headers + [
            (b"x-switchllm-model", result.model.encode()),
            (b"x-switchllm-fallback", b"true" if result.fell_back else b"false")]
        await _send_json(send, 200, result.payload, headers)
        self._finish(decision, chosen, result.model, result.fell_back, 200, False, started,
                     tokens, text, request_id)

    async def _chat_stream(
        self, receive: Receive, send: Send, payload: dict, order: list[str],
        decision: AnyDecision | None, headers: list[tuple[bytes, bytes]], started: float, text: str,
        path: str = "/chat/completions", request_id: str | None = None,
    ) -> None:
        try:
            opened: OpenStream = await _unless_gone(
                receive, self.upstreams.open_stream(order, payload, path))
        except ClientGone:
            self._finish(decision, order[0], order[0], False, 499, True, started, None, text,
                         request_id)
            return
        except UpstreamError as exc:
            self._finish(decision, order[0], order[0], False, exc.status, True, started, None, text,
                         request_id)
            await _send_json(send, exc.status, _upstream_error_body(exc),
                             headers + _retry_after_header(exc))
            return
        self.metrics.upstream_seconds.labels(opened.model).observe(opened.first_token_s)
        headers = SSE_HEADERS + headers + [
            (b"x-switchllm-model", opened.model.encode()),
            (b"x-switchllm-fallback", b"true" if opened.fell_back else b"false"),
        ]
        status = 200
        # uvicorn drops writes to a departed client silently: watch for the disconnect so that
        # the upstream generation is cancelled instead of relayed to nobody.
        gone = asyncio.ensure_future(_wait_disconnect(receive))
        try:
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"".join(opened.head),
                        "more_body": True})
            async for event in opened.rest:
                if gone.done():
                    raise ConnectionResetError("client disconnected")
                await send({"type": "http.response.body", "body": event, "more_body": True})
        except UpstreamError as exc:
            status = exc.status
            await _try_send_end(send, _sse_error(exc.message, exc.code))
        except HTTPPoolError as exc:
            status = 502
            message = f"upstream model {opened.model!r} dropped the stream ({type(exc).__name__})"
            await _try_send_end(send, _sse_error(message, "upstream_stream_error"))
        except (OSError, asyncio.CancelledError, RuntimeError) as exc:
            status = 499  # the client went away
            await opened.rest.aclose()  # type: ignore[attr-defined]
            self._finish_stream(decision, order[0], opened, status, started, text, payload,
                                request_id)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        else:
            await _try_send_end(send, b"")
        finally:
            gone.cancel()
        self._finish_stream(decision, order[0], opened, status, started, text, payload,
                            request_id)

    def _finish_stream(
        self, decision: AnyDecision | None, routed: str, opened: OpenStream, status: int,
        started: float, text: str, payload: dict, request_id: str | None = None,
    ) -> None:
        state: StreamState = opened.state
        prompt_tokens = state.prompt_tokens
        if prompt_tokens is None:  # no usage asked for: estimate (about 4 characters a token)
            chars = sum(len(content_text(m.get("content"))) for m in payload.get("messages", [])
                        if isinstance(m, dict)) or len(text)
            prompt_tokens = max(1, chars // 4)
        completion = state.completion_tokens
        if completion is None:
            completion = state.content_chunks
        self._finish(decision, routed, opened.model, opened.fell_back, status, True, started,
                     (prompt_tokens, completion), text, request_id)

    def _finish(
        self, decision: AnyDecision | None, routed: str, model: str, fell_back: bool, status: int,
        stream: bool, started: float, tokens: tuple[int | None, int | None] | None, text: str,
        request_id: str | None = None,
    ) -> None:
        router_label = decision.router if decision else "none"
        self.metrics.requests.labels(router_label, model, str(status)).inc()
        if log.isEnabledFor(logging.INFO):  # --verbose
            log.info("router=%s threshold=%s win_rate=%s routed=%s answered=%s fallback=%s "
                     "status=%s stream=%s", router_label,
                     f"{decision.threshold:.5g}" if decision else "-",
                     f"{decision.win_rate:.4f}" if decision else "-", routed, model,
                     fell_back, status, stream)
        if fell_back:
            self.metrics.fallbacks.labels(routed, model).inc()
        cost = strong_cost = best_cost = None
        prompt_tokens = completion_tokens = None
        group = decision if isinstance(decision, GroupDecision) else None
        if tokens is not None and status == 200:
            prompt_tokens, completion_tokens = tokens
            pt, ct = prompt_tokens or 0, completion_tokens or 0
            self.metrics.tokens.labels(model, "prompt").inc(pt)
            self.metrics.tokens.labels(model, "completion").inc(ct)
            cost = self.config.models[model].cost(pt, ct)
            strong_cost = self.config.models[self.config.strong_model].cost(pt, ct)
            self.metrics.cost.labels(model).inc(cost)
            self.metrics.strong_cost.inc(strong_cost)
            self._cost_total += cost
            self._strong_cost_total += strong_cost
            self.metrics.saving.set(self._strong_cost_total - self._cost_total)
            if group is not None:
                best_cost = self.config.models[group.best_model].cost(pt, ct)
                self._best_cost_total += best_cost
                self._group_cost_total += cost
                self.metrics.group_saving.labels(group.group).set(
                    self._best_cost_total - self._group_cost_total)
        if group is not None:
            self.metrics.group_choices.labels(group.group, group.model).inc()
            self.metrics.predicted_quality.labels(group.group).observe(group.predicted_quality)
        if request_id is not None:
            self._recent.add(request_id, ServedRequest(
                status, model if status == 200 else None, self.config.other_model(model),
                self.config.strong_model))
        if self.log is not None:
            self.log.record(DecisionRecord(
                ts=time.time(),
                router=decision.router if decision else None,
                threshold=decision.threshold if decision else None,
                win_rate=decision.win_rate if decision else None,
                model=model if status == 200 else None,
                routed_model=routed,
                strong_model=self.config.strong_model,
                fallback=fell_back,
                status=status,
                stream=stream,
                latency_ms=(time.perf_counter() - started) * 1000,
                routing_ms=decision.routing_s * 1000 if decision else None,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                cost_usd=cost,
                strong_cost_usd=strong_cost,
                prompt=text,
                request_id=request_id,
                route_group=group.group if group else None,
                predicted_quality=group.predicted_quality if group else None,
                expected_cost_usd=group.expected_cost if group else None,
                best_model=group.best_model if group else None,
                best_cost_usd=best_cost,
            ))

    # ---- dashboard statistics --------------------------------------------------------------
    def _warm_stats(self) -> None:
        """Fill the stats cache for the dashboard's default window, so its first load is fast
        however long the log already is."""
        try:
            self.stats.stats(StatsQuery())  # type: ignore[union-attr]
        except Exception as exc:  # the first /v1/stats will report it
            log.warning("could not read the decision log for statistics: %s", exc)

    async def _stats(self, scope: Scope) -> dict[str, Any]:
        """GET /v1/stats (serving.stats), computed on a worker thread: SQL never blocks the
        event loop."""
        if self.stats is None:
            raise HTTPError(404, "this server keeps no decision log (log: {path: null}), so it "
                            "has no statistics", code="no_decision_log")
        try:
            query = parse_stats_query(scope.get("query_string", b""))
        except StatsQueryError as exc:
            raise HTTPError(400, exc.message, param=exc.param) from None
        try:
            return await asyncio.to_thread(self.stats.stats, query)
        except StatsReadError as exc:
            log.warning("%s", exc)
            raise HTTPError(503, str(exc), type_="server_error",
                            code="decision_log_unreadable") from None

    # ---- feedback -------------------------------------------------------------------------
    async def _feedback(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Store a client's rating or preference of an answered request (see serving.feedback)."""
        body = await _read_body(scope, receive, self.config.max_body_bytes)
        # the checks every body gets (nesting depth, lone surrogates, NaN) before the feedback
        # fields are read: a surrogate request_id would otherwise break the log lookup
        _parse_object(body, "a JSON feedback object {request_id, rating | preferred_model | "
                            "winner}")
        try:
            if self.log is None:
                raise FeedbackError(400, "this server keeps no decision log (log: {path: null}): "
                                         "feedback cannot be stored", code="feedback_disabled")
            checked = parse_feedback_body(body)
            served = self._recent.get(checked["request_id"])
            if served is None:  # answered before a restart: only the log knows it
                # off the event loop: with Postgres this is a query over the network
                row = await asyncio.to_thread(self.log.find, checked["request_id"])
                if row is not None:
                    served = ServedRequest(row["status"], row["model"],
                                           self.config.other_model(row["model"] or ""),
                                           row["strong_model"])
            record = feedback_record(checked, served)
        except FeedbackError as exc:
            raise HTTPError(exc.status, exc.message, code=exc.code, param=exc.param) from None
        self.log.record_feedback(record)
        await _send_json(send, 200, {"object": "feedback", "request_id": record.request_id,
                                     "stored": True})


# ---- helpers ---------------------------------------------------------------------------------
async def _read_body(scope: Scope, receive: Receive, limit: int) -> bytes:
    too_big = HTTPError(
        413, f"request body is larger than the server's limit of {limit} bytes",
        code="request_too_large",
    )
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                if int(value) > limit:
                    raise too_big
            except ValueError:
                raise HTTPError(400, "invalid Content-Length header") from None
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise too_big
        chunks.append(chunk)
        if not message.get("more_body"):
            return b"".join(chunks)


async def _wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _unless_gone(receive: Receive, work: Awaitable[T]) -> T:
    """`work`'s result, or ClientGone (with `work` cancelled) if the client hangs up first:
    upstream calls, retries and fallbacks for a departed client only cost money."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(_wait_disconnect(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
    if not task.done():
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
        raise ClientGone()
    return task.result()


MAX_JSON_DEPTH = 64


def _require_method(path: str, method: str, allowed: str) -> None:
    if method != allowed:
        raise HTTPError(405, f"{path} accepts {allowed} only", code="method_not_allowed")


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _check_json(value: Any, where: str = "body", depth: int = 0) -> None:
    """Reject what would break later, for this request only: nesting deeper than
    MAX_JSON_DEPTH and lone UTF-16 surrogates (valid JSON escapes that no UTF-8 encoder, tokenizer
    or upstream accepts). Walks containers only; each string is checked by one C-level encode."""
    if depth > MAX_JSON_DEPTH:
        raise HTTPError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise HTTPError(
                400, f"{where} contains a lone UTF-16 surrogate, which is not valid text"
            ) from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_json(key, where, depth + 1)
            _check_json(item, f"{where}.{key}" if where != "body" else key, depth + 1)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_json(item, f"{where}[{i}]", depth + 1)


def _parse_object(body: bytes, what: str = "a JSON object") -> dict[str, Any]:
    """The request body as a JSON object that is safe to route and forward (see _check_json)."""
    if not body.strip():
        raise HTTPError(400, f"request body is empty; send {what}")
    try:
        payload = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise HTTPError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(payload, dict):
        raise HTTPError(400, "request body must be a JSON object")
    _check_json(payload)
    if not isinstance(payload.get("stream", False), bool | None):
        raise HTTPError(400, "'stream' must be true or false", param="stream")
    return payload


def _request_text(value: Any) -> str:
    """The text to route on: a string, a list of strings (joined), or Responses API input
    items (the last user message's text parts)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    if isinstance(value, list):
        return prompt_text([v for v in value if isinstance(v, dict)])
    return ""


def _parse_request(body: bytes) -> dict[str, Any]:
    """A chat completion request, checked by its pydantic model (serving.request_models)."""
    payload = _parse_object(body, "a JSON chat completion request")
    try:
        check_chat_request(payload)
    except RequestShapeError as exc:
        raise HTTPError(400, exc.message, param=exc.param, code=exc.code) from None
    return payload


def _routing_headers(decision: AnyDecision | None) -> list[tuple[bytes, bytes]]:
    if decision is None:
        return []
    if isinstance(decision, GroupDecision):
        return [
            (b"x-switchllm-router", decision.router.encode()),
            (b"x-switchllm-group", decision.group.encode()),
            (b"x-switchllm-routed-model", decision.model.encode()),
            (b"x-switchllm-predicted-quality", f"{decision.predicted_quality:.4f}".encode()),
            (b"x-switchllm-expected-cost", f"{decision.expected_cost:.6g}".encode()),
            (b"x-switchllm-routing-ms", f"{decision.routing_s * 1000:.2f}".encode()),
        ]
    return [
        (b"x-switchllm-router", decision.router.encode()),
        (b"x-switchllm-threshold", f"{decision.threshold:.6g}".encode()),
        (b"x-switchllm-win-rate", f"{decision.win_rate:.6f}".encode()),
        (b"x-switchllm-routed-model", decision.model.encode()),
        (b"x-switchllm-routing-ms", f"{decision.routing_s * 1000:.2f}".encode()),
    ]


def _retry_after_header(exc: UpstreamError) -> list[tuple[bytes, bytes]]:
    """Tell a rate-limited caller when to come back, as the upstream told us."""
    if exc.status != 429 or exc.retry_after is None:
        return []
    return [(b"retry-after", str(max(1, math.ceil(exc.retry_after))).encode())]


def _upstream_error_body(exc: UpstreamError) -> dict[str, Any]:
    if exc.body and isinstance(exc.body.get("error"), dict):
        return exc.body
    type_ = "rate_limit_error" if exc.status == 429 else "upstream_error"
    return error_body(exc.message, type_, exc.code)


def _sse_error(message: str, code: str) -> bytes:
    body = error_body(message, "upstream_error", code)
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def _send(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]]
) -> None:
    await send({
        "type": "http.response.start", "status": status,
        "headers": [*headers, (b"content-length", str(len(body)).encode())],
    })
    await send({"type": "http.response.body", "body": body})


async def _send_json(
    send: Send, status: int, obj: Any, extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    body = json.dumps(obj, ensure_ascii=False).encode()
    await _send(send, status, body, JSON_HEADERS + (extra or []))


async def _try_send_end(send: Send, body: bytes) -> None:
    try:
        await send({"type": "http.response.body", "body": body, "more_body": False})
    except Exception:
        pass


def create_app(config: ServingConfig, routers: RouterSet | None = None) -> SwitchServer:
    return SwitchServer(config, routers)
