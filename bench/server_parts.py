"""The routing server assembled from alternative parts, one variant per process, for
`python bench/server.py --parts` (issue 7: measure, then choose the parts).

    python bench/server_parts.py --variant starlette --port 8001 --upstream-port 8000 --log x.db

Every variant serves the same `SwitchServer` handlers for the random router against the same
upstream; only the named part differs from the shipped server (`raw`):

- `raw`: the shipped server: Starlette's router in front of ASGI-level handlers, `http_pool.py`,
  pydantic request checks, uvicorn with uvloop + httptools;
- `hand-dispatch`: the same with the hand-written if/elif path dispatch it replaced;
- `hand-checks`: the same with the hand-written request checks pydantic replaced;
- `random-on-thread`: the same with the random router run on its worker thread, as before;
- `asyncio+h11`, `asyncio+httptools`, `uvloop+h11`: uvicorn's other event loops and HTTP parsers
  (`uvicorn` without the `[standard]` extra runs asyncio + h11);
- `starlette-asgi`: a whole Starlette app (its default middleware) in front of the same ASGI
  handlers;
- `starlette`: Starlette endpoints taking a `Request` and returning a `Response` (the idiomatic
  port);
- `fastapi`: FastAPI path operations taking a `Request` and returning a `Response`;
- `aiohttp`: aiohttp's client session in place of `http_pool.py`;

Before the port, `raw` was the hand dispatch with hand checks; those runs are in
docs/SERVING.md too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, MutableMapping
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from switchllm.serving import build_config, create_app  # noqa: E402
from switchllm.serving import server as server_module  # noqa: E402
from switchllm.serving.http_pool import (  # noqa: E402
    ConnectError,
    ProtocolError,
    ReadTimeout,
    Response,
    Target,
)

LOOPS = {"asyncio+h11": ("asyncio", "h11"), "asyncio+httptools": ("asyncio", "httptools"),
         "uvloop+h11": ("uvloop", "h11")}
VARIANTS = ("raw", "hand-dispatch", "hand-checks", "random-on-thread", *LOOPS, "starlette-asgi",
            "starlette", "fastapi", "aiohttp")
API_PATHS = ("/v1/chat/completions", "/chat/completions")
# variants whose part is not a switchllm dependency: `pip install switchllm[bench]`
NEEDS = {"fastapi": "fastapi", "aiohttp": "aiohttp"}


def installed(variant: str) -> bool:
    from importlib.util import find_spec

    return variant not in NEEDS or find_spec(NEEDS[variant]) is not None


# ---- Starlette / FastAPI ------------------------------------------------------------------
class _ASGIEndpoint:
    """A Starlette endpoint that is an ASGI app (not a function): Starlette calls it with the
    raw scope, receive and send."""

    def __init__(self, server: Any) -> None:
        self.server = server

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        await self.server(scope, receive, send)


def _lifespan(server: Any):  # noqa: ANN202
    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        _ = server.upstreams
        await server.routing.warm_up()
        yield
        await server.aclose()

    return lifespan


async def _as_response(server: Any, request: Any) -> Any:
    """Run the shipped handler and hand its answer back as a framework Response, as an
    endpoint written for the framework would build one."""
    from starlette.responses import Response as StarletteResponse

    sent: list[MutableMapping[str, Any]] = []

    async def capture(message: MutableMapping[str, Any]) -> None:
        sent.append(message)

    await server(request.scope, request.receive, capture)
    start = sent[0]
    headers = {name.decode("latin-1"): value.decode("latin-1")
               for name, value in start["headers"] if name != b"content-length"}
    body = b"".join(m.get("body", b"") for m in sent[1:])
    return StarletteResponse(body, status_code=start["status"], headers=headers)


def starlette_app(server: Any, asgi_endpoints: bool) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Route

    async def endpoint(request: Any) -> Any:
        return await _as_response(server, request)

    handler = _ASGIEndpoint(server) if asgi_endpoints else endpoint
    routes = [Route(path, handler, methods=["POST"]) for path in API_PATHS]
    routes.append(Route("/health", handler, methods=["GET"]))  # for --micro
    return Starlette(routes=routes, lifespan=_lifespan(server))


def fastapi_app(server: Any) -> Any:
    from fastapi import FastAPI, Request

    app = FastAPI(lifespan=_lifespan(server))

    async def chat(request: Request) -> Any:
        return await _as_response(server, request)

    # FastAPI reads the annotation to inject the Request; with postponed annotations it is the
    # string "Request", which it cannot resolve from this function's scope
    chat.__annotations__ = {"request": Request}
    for path in API_PATHS:
        app.post(path)(chat)
    app.get("/health")(chat)  # for --micro
    return app


# ---- aiohttp's client in place of http_pool ----------------------------------------------
class _AiohttpStream:
    """http_pool.StreamResponse's interface over an aiohttp response."""

    def __init__(self, response: Any, read_timeout: float) -> None:
        self.response = response
        self.status = response.status
        self.headers = {k.lower(): v for k, v in response.headers.items()}
        self.read_timeout = read_timeout

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        import aiohttp

        iterator = self.response.content.iter_any().__aiter__()
        while True:
            try:
                async with asyncio.timeout(self.read_timeout):
                    chunk = await iterator.__anext__()
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise ReadTimeout("upstream read timed out") from None
            except aiohttp.ClientError as exc:
                raise ProtocolError(f"stream broke: {type(exc).__name__}") from None
            yield chunk

    async def aread(self) -> bytes:
        return b"".join([chunk async for chunk in self.aiter_raw()])

    async def aclose(self) -> None:
        self.response.release()


class AiohttpPool:
    """http_pool.HTTPPool's interface over one aiohttp ClientSession (created in the loop)."""

    def __init__(self, connect_timeout: float, read_timeout: float) -> None:
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._session: Any = None

    def _client(self) -> Any:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=0, ttl_dns_cache=300),
                timeout=aiohttp.ClientTimeout(sock_connect=self.connect_timeout,
                                              sock_read=self.read_timeout),
                auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding"),
            )
        return self._session

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def stream(self, method: str, target: Target, headers: dict[str, str],
                     body: bytes) -> _AiohttpStream:
        import aiohttp

        url = f"{target.scheme}://{target.host_header}{target.path}"
        try:
            response = await self._client().request(method, url, headers=headers, data=body)
        except TimeoutError:
            raise ReadTimeout("upstream did not answer in time") from None
        except aiohttp.ClientConnectorError as exc:
            raise ConnectError(f"cannot connect: {type(exc).__name__}") from None
        except aiohttp.ClientError as exc:
            raise ProtocolError(f"no valid response: {type(exc).__name__}") from None
        return _AiohttpStream(response, self.read_timeout)

    async def request(self, method: str, target: Target, headers: dict[str, str],
                      body: bytes) -> Response:
        response = await self.stream(method, target, headers, body)
        try:
            data = await response.aread()
        finally:
            await response.aclose()
        return Response(response.status, response.headers, data)


# ---- the hand-written parts the shipped server replaced ----------------------------------
def install_hand_checks() -> None:
    server_module._parse_request = _hand_parse_request


def hand_dispatch(server: Any) -> Any:
    """The if/elif path dispatch the server had before Starlette's router, over the same
    endpoints (`SwitchServer._serve` checks method, origin and key as before)."""
    serve = server._serve
    forwarded = server_module.FORWARDED
    chat_paths = server_module.CHAT_PATHS

    async def dispatch(scope: Any, receive: Any, send: Any) -> None:
        path = scope["path"]
        if path in chat_paths:
            await serve(scope, receive, send, "POST", True, server._chat)
        elif path in forwarded:
            scope["path_params"] = {}

            async def forward(scope: Any, receive: Any, send: Any) -> None:
                await server._forward_endpoint(forwarded[path], scope, receive, send)

            await serve(scope, receive, send, "POST", True, forward)
        elif path.startswith(("/v1/models/", "/models/")):
            scope["path_params"] = {"model_id": path.partition("/models/")[2]}
            await serve(scope, receive, send, "GET", True, server._model_endpoint)
        elif path == "/v1/feedback":
            await serve(scope, receive, send, "POST", True, server._feedback)
        elif path == "/health":
            await serve(scope, receive, send, "GET", False, server._health_endpoint)
        elif path in ("/v1/models", "/models"):
            await serve(scope, receive, send, "GET", True, server._models_endpoint)
        elif path == "/metrics":
            await serve(scope, receive, send, "GET", True, server._metrics_endpoint)
        else:
            await serve(scope, receive, send, None, False, server._not_found)

    return dispatch


def build(variant: str, upstream_port: int, log: str) -> Any:
    config = build_config(
        routers=["random"], strong_model="strong", weak_model="weak",
        base_url=f"http://127.0.0.1:{upstream_port}/v1", overrides={"log_path": log},
    )
    if variant == "hand-checks":
        install_hand_checks()
    server = create_app(config)
    if variant == "hand-dispatch":
        server._router = hand_dispatch(server)
    if variant == "random-on-thread":
        server.routing.batchers["random"].inline = False
    if variant == "aiohttp":
        upstreams = server.upstreams
        upstreams.client = AiohttpPool(config.connect_timeout, config.timeout)
    if variant == "starlette-asgi":
        return starlette_app(server, asgi_endpoints=True)
    if variant == "starlette":
        return starlette_app(server, asgi_endpoints=False)
    if variant == "fastapi":
        return fastapi_app(server)
    return server


# ---- --micro: the CPU each part costs per request, in this process --------------------------
# On a machine shared with other work, req/s moves by tens of percent between identical runs;
# the CPU time one process spends per request (best of several repeats) barely moves.
def _best_us(run: Any, requests: int, repeats: int) -> float:
    import time

    best = float("inf")
    for _ in range(repeats):
        started = time.process_time()
        run()
        best = min(best, time.process_time() - started)
    return best / requests * 1e6


def micro_framework(requests: int, repeats: int) -> dict[str, float]:
    """CPU us per GET /health through each app variant, driven as ASGI in memory (no sockets):
    what the framework adds to every request."""
    import tempfile

    results = {}
    log = str(Path(tempfile.mkdtemp(prefix="switchllm-micro-")) / "log.sqlite")
    for variant in ("hand-dispatch", "raw", "starlette-asgi", "starlette", "fastapi"):
        if not installed(variant):
            continue
        app = build(variant, 9, log)
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": "GET", "scheme": "http", "path": "/health", "raw_path": b"/health",
                 "root_path": "", "query_string": b"", "server": ("127.0.0.1", 6060),
                 "client": ("127.0.0.1", 5000), "headers": [(b"host", b"127.0.0.1:6060")]}

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        statuses: set[int] = set()

        async def send(message: MutableMapping[str, Any], statuses: set = statuses) -> None:
            if message["type"] == "http.response.start":
                statuses.add(message["status"])

        async def many(app: Any = app, scope: dict = scope, send: Any = send) -> None:
            for _ in range(requests):
                await app(dict(scope), receive, send)

        loop = asyncio.new_event_loop()
        results[variant] = _best_us(lambda loop=loop, many=many: loop.run_until_complete(many()),
                                    requests, repeats)
        loop.close()
        assert statuses == {200}, (variant, statuses)
    return results


def micro_clients(upstream_port: int, requests: int, repeats: int) -> dict[str, float]:
    """CPU us this process spends per upstream call, http_pool against aiohttp, one at a time
    and 64 at once, against a FakeUpstream in another process."""
    import json

    from switchllm.serving.http_pool import HTTPPool

    target = Target.parse(f"http://127.0.0.1:{upstream_port}/v1/chat/completions")
    headers = {"content-type": "application/json", "accept": "application/json"}
    body = json.dumps({"model": "strong", "messages": [{"role": "user", "content": "hi"}]}
                      ).encode()
    results = {}
    for name in ("http_pool", "aiohttp") if installed("aiohttp") else ("http_pool",):
        for clients in (1, 64):
            loop = asyncio.new_event_loop()
            pool = (HTTPPool() if name == "http_pool" else AiohttpPool(5.0, 60.0))

            async def worker(n: int, pool: Any = pool) -> None:
                for _ in range(n):
                    response = await pool.request("POST", target, headers, body)
                    assert response.status == 200

            async def many(clients: int = clients) -> None:
                await asyncio.gather(*(worker(requests // clients) for _ in range(clients)))

            loop.run_until_complete(many())  # connect and warm up
            results[f"{name} c={clients}"] = _best_us(
                lambda loop=loop, many=many: loop.run_until_complete(many()), requests, repeats)
            loop.run_until_complete(pool.aclose())
            loop.close()
    return results


def micro_checks(requests: int, repeats: int) -> dict[str, float]:
    """CPU us to parse and check one chat request: hand checks against pydantic."""
    import json

    body = json.dumps({"model": "router-random-0.5", "stream": False, "messages": [
        {"role": "user", "content": "Question 5: explain TCP and UDP in 8 sentences."}]}).encode()
    results = {}
    hand = _hand_parse_request
    for name, parse in (("hand checks", hand), ("pydantic", server_module._parse_request)):
        results[name] = _best_us(lambda parse=parse: [parse(body) for _ in range(requests)],
                                 requests, repeats)
    return results


def _hand_parse_request(body: bytes) -> dict[str, Any]:
    """The hand-written chat request checks the server had before pydantic."""
    HTTPError = server_module.HTTPError
    payload = server_module._parse_object(body, "a JSON chat completion request")
    messages = payload.get("messages")
    if messages is None:
        raise HTTPError(400, "'messages' is required", param="messages", code="missing_required")
    if not isinstance(messages, list) or not messages:
        raise HTTPError(400, "'messages' must be a non-empty list of messages", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise HTTPError(400, f"messages[{i}] must be an object with a 'role'",
                            param=f"messages[{i}]")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise HTTPError(400, "'model' is required", param="model", code="missing_required")
    return payload


def micro_routing(requests: int, repeats: int) -> dict[str, float]:
    """CPU us per random-router decision, one at a time and 64 at once: on the event loop, and
    handed to the router's worker thread (where 64 at once share a batch)."""
    from switchllm.serving.routing import AsyncRouting, RouterSet

    results = {}
    for name, inline in (("random inline", True), ("random on thread", False)):
        for clients in (1, 64):
            routing = AsyncRouting(RouterSet(["random"]), "strong", "weak", 0.001)
            routing.batchers["random"].inline = inline

            async def worker(n: int, routing: AsyncRouting = routing) -> None:
                for i in range(n):
                    await routing.decide("random", 0.5, f"prompt {i}")

            async def many(clients: int = clients) -> None:
                await asyncio.gather(*(worker(requests // clients) for _ in range(clients)))

            loop = asyncio.new_event_loop()
            results[f"{name} c={clients}"] = _best_us(
                lambda loop=loop, many=many: loop.run_until_complete(many()), requests, repeats)
            loop.close()
            routing.close()
    return results


def micro(upstream_port: int, requests: int, repeats: int) -> dict[str, dict[str, float]]:
    return {"routing": micro_routing(requests, repeats),
            "framework": micro_framework(requests, repeats),
            "client": micro_clients(upstream_port, requests, repeats),
            "checks": micro_checks(requests, repeats)}


def main() -> int:
    import uvicorn

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--log", required=True)
    args = parser.parse_args()
    loop, http = LOOPS.get(args.variant, ("uvloop", "httptools"))
    app = build(args.variant, args.upstream_port, args.log)
    uvicorn.run(app, host="127.0.0.1", port=args.port, loop=loop, http=http,
                log_level="warning", access_log=False, lifespan="on", timeout_keep_alive=30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
