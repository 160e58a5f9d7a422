"""Ray Serve: the routing server on more than one machine (`switchllm serve --ray`, or
`serve run switchllm.serving.ray_app:build config=config.yaml` with Ray's own CLI).

Two deployments:

- `RouterReplicas` computes win rates. Prompts from all ingress replicas are batched into one
  router call with `@serve.batch` (the batch size and wait come from the YAML), and Ray scales
  the replicas: router compute (embeddings, torch) is where the CPU goes.
- `Ingress` is the OpenAI-compatible server itself (serving.server.SwitchServer, the same code
  as `switchllm serve`: endpoints, validation, upstream calls with retries and fallback, the
  decision log, /metrics) with its win rates asked of the router replicas.

Settings, in the serve YAML (every key optional; the Ray Serve deployment options they name):

    ray:
      router:                          # RouterReplicas
        num_replicas: 2                # or autoscaling_config: {min_replicas, max_replicas,
        max_batch_size: 64             #   target_ongoing_requests, ...}
        batch_wait_timeout_s: 0.002
        max_ongoing_requests: 256
        ray_actor_options: {num_cpus: 1}
      ingress:                         # Ingress
        autoscaling_config: {min_replicas: 1, max_replicas: 4, target_ongoing_requests: 64}

The decision log: every ingress replica writes its own rows, to the SQLite file of `log.path`
(safe for replicas on one machine: see decision_log) or, for replicas on many machines, to one
shared database URL once the Postgres log (`--log-url`) is in. Each replica's /metrics counts
its own requests; Ray Serve's own metrics cover the whole application.

Ray is an optional dependency: `pip install 'switchllm[ray]'`.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from switchllm.serving.config import ConfigError, load_yaml
from switchllm.serving.routing import AsyncRouting, Decision, choose, routable_text, router_pair

APP_NAME = "switchllm"
_DEPLOYMENT_KEYS = ("num_replicas", "autoscaling_config", "max_ongoing_requests",
                    "ray_actor_options", "max_queued_requests", "health_check_period_s",
                    "graceful_shutdown_timeout_s")
INGRESS_MAX_ONGOING = 1000  # requests in flight per ingress replica (most wait on upstreams)
_BATCH_KEYS = {"max_batch_size": int, "batch_wait_timeout_s": float}


@dataclass
class RaySettings:
    """The `ray:` section of the serve YAML, checked."""

    router: dict[str, Any] = field(default_factory=dict)  # deployment options
    ingress: dict[str, Any] = field(default_factory=dict)
    max_batch_size: int = 64
    batch_wait_timeout_s: float = 0.002


def ray_settings(raw: Mapping[str, Any] | None, where: str = "config") -> RaySettings:
    section = (raw or {}).get("ray") or {}
    if not isinstance(section, Mapping):
        raise ConfigError(f"{where}: ray must be a mapping with router and ingress settings")
    unknown = set(section) - {"router", "ingress"}
    if unknown:
        raise ConfigError(f"{where}: ray: unknown setting {sorted(unknown)[0]!r} "
                          "(known: router, ingress)")
    settings = RaySettings()
    for part in ("router", "ingress"):
        options = section.get(part) or {}
        if not isinstance(options, Mapping):
            raise ConfigError(f"{where}: ray.{part} must be a mapping")
        for key, value in options.items():
            if part == "router" and key in _BATCH_KEYS:
                try:
                    if isinstance(value, bool):
                        raise TypeError
                    typed = _BATCH_KEYS[key](value)
                except (TypeError, ValueError):
                    raise ConfigError(f"{where}: ray.router.{key} must be a number, got "
                                      f"{value!r}") from None
                if typed <= 0 if key == "max_batch_size" else typed < 0:
                    raise ConfigError(f"{where}: ray.router.{key} must be positive, got {value}")
                setattr(settings, key, typed)
            elif key in _DEPLOYMENT_KEYS:
                getattr(settings, part)[key] = value
            else:
                known = [*_DEPLOYMENT_KEYS, *(_BATCH_KEYS if part == "router" else ())]
                raise ConfigError(f"{where}: ray.{part}: unknown setting {key!r} (known: "
                                  f"{', '.join(known)})")
        if "num_replicas" in options and "autoscaling_config" in options:
            raise ConfigError(f"{where}: ray.{part}: give num_replicas or autoscaling_config, "
                              "not both")
    # Ray Serve lets a replica hold 5 requests by default: a router replica could then never
    # batch more than 5 prompts, and an ingress (which mostly waits on upstreams) would queue
    # clients at the proxy while idle.
    settings.router.setdefault("max_ongoing_requests", 4 * settings.max_batch_size)
    settings.ingress.setdefault("max_ongoing_requests", INGRESS_MAX_ONGOING)
    return settings


def _serve():  # noqa: ANN202 - the ray.serve module, or a clear error without Ray
    try:
        from ray import serve
    except ImportError:
        raise ConfigError("Ray Serve is not installed: pip install 'switchllm[ray]'") from None
    return serve


def deployments():  # noqa: ANN201 - (RouterReplicas, Ingress), defined once Ray is imported
    """The two deployment classes (made on first use, so importing this module needs no Ray)."""
    if _DEPLOYMENTS:
        return _DEPLOYMENTS[0]
    serve = _serve()

    @serve.deployment(name="RouterReplicas")
    class RouterReplicas:
        def __init__(self, routers: dict[str, str], torch_threads: int, max_batch_size: int,
                     batch_wait_timeout_s: float) -> None:
            from switchllm.serving.routing import RouterSet

            if torch_threads:
                import torch

                torch.set_num_threads(torch_threads)
            self.routers = RouterSet(routers)
            self.win_rates.set_max_batch_size(max_batch_size)
            self.win_rates.set_batch_wait_timeout_s(batch_wait_timeout_s)
            self.batches = 0
            self.largest_batch = 0

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002,
                     batch_size_fn=lambda calls: sum(len(call.prompts) for call in calls))
        async def win_rates(self, calls: list[RouterCall]) -> list[list[float | str]]:
            """Calls from any ingress replicas, each a micro-batch of one router's prompts,
            answered in one router call per router (and pair): per prompt a win rate, or the
            error message of a prompt the router could not score."""
            self.batches += 1
            self.largest_batch = max(self.largest_batch, sum(len(c.prompts) for c in calls))
            return await asyncio.to_thread(self._compute, calls)

        def _compute(self, calls: list[RouterCall]) -> list[list[float | str]]:
            from switchllm.serving.routing import batch_win_rates

            by_router: dict[str, list[tuple[int, int]]] = {}
            for c, call in enumerate(calls):
                by_router.setdefault(call.router, []).extend(
                    (c, i) for i in range(len(call.prompts)))
            results: list[list[float | str]] = [[0.0] * len(call.prompts) for call in calls]
            for name, slots in by_router.items():
                router = self.routers.get(name)
                rates = batch_win_rates(router, [(calls[c].prompts[i], tuple(calls[c].pair))
                                                 for c, i in slots])
                for (c, i), rate in zip(slots, rates, strict=True):
                    if isinstance(rate, Exception):
                        results[c][i] = f"router {name} failed: {rate}"
                    else:
                        results[c][i] = rate if math.isfinite(rate) else 0.0
            return results

        def stats(self) -> dict[str, int]:
            return {"batches": self.batches, "largest_batch": self.largest_batch}

    @serve.deployment(name="Ingress")
    @serve.ingress()
    class Ingress:
        def __init__(self, serve_args: dict[str, Any], router_replicas: Any,
                     max_batch_size: int) -> None:
            self.serve_args = serve_args
            self.router_replicas = router_replicas
            self.max_batch_size = max_batch_size

        def __serve_build_asgi_app__(self) -> Any:
            from switchllm.commands.serve import config_from_args
            from switchllm.serving.server import SwitchServer

            config = config_from_args(argparse.Namespace(**self.serve_args))
            replicas, limit = self.router_replicas, self.max_batch_size
            return SwitchServer(config, routing=lambda routers: RemoteRouting(
                replicas, routers, config.strong_model, config.weak_model,
                config.max_prompt_chars, limit))

    _DEPLOYMENTS.append((RouterReplicas, Ingress))
    return RouterReplicas, Ingress


_DEPLOYMENTS: list[tuple[Any, Any]] = []


@dataclass(frozen=True)
class RouterCall:
    """One ingress micro-batch for the router replicas: prompts for one router and pair."""

    router: str
    prompts: list[str]
    pair: tuple[str | None, str | None]


class RemoteBatcher:
    """Collects an ingress replica's concurrent requests for one router into one call to the
    router replicas (a Ray call costs milliseconds: one per request would cap throughput at
    what the handles can carry). Up to `in_flight` calls run at once, so several router
    replicas stay busy; requests arriving meanwhile join the next call."""

    def __init__(self, replicas: Any, router: str, max_batch: int, in_flight: int = 4) -> None:
        self.replicas = replicas
        self.router = router
        self.max_batch = max_batch
        self.in_flight = in_flight
        self._running = 0
        self._pending: list[tuple[str, tuple[str | None, str | None], asyncio.Future]] = []
        self._scheduled = False

    async def win_rate(self, prompt: str, pair: tuple[str | None, str | None]) -> float:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[float] = loop.create_future()
        self._pending.append((prompt, pair, future))
        self._schedule(loop)
        return await future

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._pending and not self._scheduled and self._running < self.in_flight:
            self._scheduled = True
            loop.call_soon(self._start, loop)

    def _start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        pending = [item for item in self._pending if not item[2].done()]
        pair = pending[0][1] if pending else (None, None)
        batch = [item for item in pending if item[1] == pair][: self.max_batch]
        chosen = {id(item) for item in batch}
        self._pending = [item for item in pending if id(item) not in chosen]
        if batch:
            self._running += 1
            loop.create_task(self._call(loop, batch, pair))
        self._schedule(loop)

    async def _call(self, loop: asyncio.AbstractEventLoop, batch: list, pair: tuple) -> None:
        try:
            rates = await self.replicas.win_rates.remote(
                RouterCall(self.router, [prompt for prompt, _, _ in batch], pair))
        except Exception as exc:  # noqa: BLE001 - every request of the call fails with it
            rates = [exc] * len(batch)
        finally:
            self._running -= 1
        for (_, _, future), rate in zip(batch, rates, strict=True):
            if future.done():
                continue
            if isinstance(rate, Exception):
                future.set_exception(rate)
            elif isinstance(rate, str):
                future.set_exception(RuntimeError(rate))
            else:
                future.set_result(rate)
        self._schedule(loop)


class RemoteRouting(AsyncRouting):
    """AsyncRouting whose win rates come from the RouterReplicas deployment. The routers are
    also loaded here (thresholds, strong shares and model names read their cards; route groups
    score their models locally); pair routing computes nothing in the ingress."""

    def __init__(self, replicas: Any, routers: Any, strong: str, weak: str,
                 max_prompt_chars: int, max_batch: int = 64) -> None:
        super().__init__(routers, strong, weak, 0.0, 1, max_prompt_chars)
        self.remote = {name: RemoteBatcher(replicas, name, max_batch) for name in routers.routers}

    async def decide(self, name: str, threshold: float, prompt: str) -> Decision:
        router = self.routers.get(name)
        started = time.perf_counter()
        rate = await self.remote[name].win_rate(
            routable_text(prompt, self.max_prompt_chars),
            router_pair(router, self.strong, self.weak))
        model = choose(rate, threshold, self.strong, self.weak)
        return Decision(name, threshold, rate, model, time.perf_counter() - started)

    async def warm_up(self) -> None:
        for name in self.routers.routers:
            await self.decide(name, 0.5, f"warm-up {time.time_ns()}")


def build_app(serve_args: Mapping[str, Any], settings: RaySettings) -> Any:
    """The Ray Serve application for `switchllm serve` flags `serve_args` (a dict of the
    parsed flags: each ingress replica rebuilds its configuration from them)."""
    from switchllm.commands.serve import config_from_args

    config = config_from_args(argparse.Namespace(**serve_args))  # errors here, not in replicas
    router_cls, ingress_cls = deployments()
    routers = router_cls.options(**settings.router).bind(
        dict(config.routers), config.router_threads, settings.max_batch_size,
        settings.batch_wait_timeout_s)
    return ingress_cls.options(**settings.ingress).bind(dict(serve_args), routers,
                                                        settings.max_batch_size)


def build(args: dict[str, str]) -> Any:
    """Application builder for Ray's CLI: `serve run switchllm.serving.ray_app:build
    config=serve.yaml [routers=mf] [log=/path/log.sqlite]`: keys are `switchllm serve` flags
    (with underscores), values as on its command line."""
    from switchllm.commands import serve as serve_command

    parser = argparse.ArgumentParser(prog="switchllm.serving.ray_app:build")
    serve_command.add_arguments(parser)
    argv: list[str] = []
    for key, value in args.items():
        flag = "--" + key.replace("_", "-")
        if value in ("true", "True", ""):
            argv.append(flag)
        else:
            argv += [flag, *str(value).split()] if key == "routers" else [flag, str(value)]
    parsed = parser.parse_args(argv)
    raw = load_yaml(parsed.config) if parsed.config else {}
    return build_app(vars(parsed), ray_settings(raw, parsed.config or "config"))


def run(serve_args: Mapping[str, Any], address: str | None = None) -> int:
    """`switchllm serve --ray`: deploy on the Ray cluster at `address` ($RAY_ADDRESS when
    None; a new local instance when neither is set), serve until SIGTERM or SIGINT, then
    remove the application (each ingress replica flushes its log rows as it stops)."""
    import signal
    import threading

    serve = _serve()
    import ray

    from switchllm.commands.serve import config_from_args

    config = config_from_args(argparse.Namespace(**serve_args))
    path = serve_args.get("config")
    settings = ray_settings(load_yaml(path) if path else {}, path or "config")
    application = build_app(serve_args, settings)
    ray.init(address=address, include_dashboard=False, logging_level="warning",
             log_to_driver=False)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):  # after ray.init, which sets its own
        signal.signal(sig, lambda *_: stop.set())
    try:
        serve.start(http_options={"host": config.host, "port": config.port})
        serve.run(application, name=APP_NAME, route_prefix="/")
        print(f"switchllm: Ray Serve application {APP_NAME!r} ready on "
              f"http://{config.host}:{config.port}/v1", flush=True)
        stop.wait()
        serve.delete(APP_NAME)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0
