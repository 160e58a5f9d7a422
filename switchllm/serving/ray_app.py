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
            self.win_rate.set_max_batch_size(max_batch_size)
            self.win_rate.set_batch_wait_timeout_s(batch_wait_timeout_s)
            self.batches = 0
            self.largest_batch = 0

        @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002)
        async def win_rate(self, names: list[str], prompts: list[str],
                           pairs: list[tuple[str | None, str | None]]) -> list[float | str]:
            """One batch of (router name, prompt, pair): a win rate per item, or the error
            message of an item the router could not score."""
            self.batches += 1
            self.largest_batch = max(self.largest_batch, len(names))
            return await asyncio.to_thread(self._compute, names, prompts, pairs)

        def _compute(self, names: list[str], prompts: list[str],
                     pairs: list[tuple[str | None, str | None]]) -> list[float | str]:
            from switchllm.serving.routing import batch_win_rates

            results: list[float | str] = [0.0] * len(names)
            by_router: dict[str, list[int]] = {}
            for i, name in enumerate(names):
                by_router.setdefault(name, []).append(i)
            for name, indices in by_router.items():
                router = self.routers.get(name)
                rates = batch_win_rates(router, [(prompts[i], tuple(pairs[i])) for i in indices])
                for i, rate in zip(indices, rates, strict=True):
                    if isinstance(rate, Exception):
                        results[i] = f"router {name} failed: {rate}"
                    else:
                        results[i] = rate if math.isfinite(rate) else 0.0
            return results

        def stats(self) -> dict[str, int]:
            return {"batches": self.batches, "largest_batch": self.largest_batch}

    @serve.deployment(name="Ingress")
    @serve.ingress()
    class Ingress:
        def __init__(self, serve_args: dict[str, Any], router_replicas: Any) -> None:
            self.serve_args = serve_args
            self.router_replicas = router_replicas

        def __serve_build_asgi_app__(self) -> Any:
            from switchllm.commands.serve import config_from_args
            from switchllm.serving.server import SwitchServer

            config = config_from_args(argparse.Namespace(**self.serve_args))
            replicas = self.router_replicas
            return SwitchServer(config, routing=lambda routers: RemoteRouting(
                replicas, routers, config.strong_model, config.weak_model,
                config.max_prompt_chars))

    _DEPLOYMENTS.append((RouterReplicas, Ingress))
    return RouterReplicas, Ingress


_DEPLOYMENTS: list[tuple[Any, Any]] = []


class RemoteRouting(AsyncRouting):
    """AsyncRouting whose win rates come from the RouterReplicas deployment. The routers are
    also loaded here (thresholds, strong shares and model names read their cards; route groups
    score their models locally); pair routing computes nothing in the ingress."""

    def __init__(self, replicas: Any, routers: Any, strong: str, weak: str,
                 max_prompt_chars: int) -> None:
        super().__init__(routers, strong, weak, 0.0, 1, max_prompt_chars)
        self.replicas = replicas

    async def decide(self, name: str, threshold: float, prompt: str) -> Decision:
        router = self.routers.get(name)
        started = time.perf_counter()
        rate = await self.replicas.win_rate.remote(
            name, routable_text(prompt, self.max_prompt_chars),
            router_pair(router, self.strong, self.weak))
        if isinstance(rate, str):
            raise RuntimeError(rate)
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
    return ingress_cls.options(**settings.ingress).bind(dict(serve_args), routers)


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
