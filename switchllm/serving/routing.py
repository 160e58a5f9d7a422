"""Routing decisions shared by the server and the Controller: which router, which threshold,
which model. The server's async path micro-batches concurrent requests into one `win_rate` call
that runs on a worker thread, so router compute (embeddings, torch) never blocks the event loop.
"""

from __future__ import annotations

import asyncio
import math
import os
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

from switchllm.routers import Router, load_router
from switchllm.routers.choice import Choice, ModelChooser
from switchllm.serving.config import ModelNameError, RouteRequest, check_threshold

# Routers read the start of a prompt (MiniLM and bert: 256 tokens, about 1,000-2,000
# characters), but tokenizers read all of it before truncating: a 3.9 MB prompt took 5.9 s on
# the router thread that every request shares. Cutting first keeps routing fast for everyone.
MAX_PROMPT_CHARS = 16_000


def routable_text(prompt: str, max_chars: int = MAX_PROMPT_CHARS) -> str:
    """The part of `prompt` a router reads (text features see at most `max_chars` too)."""
    return prompt if len(prompt) <= max_chars else prompt[:max_chars]


@dataclass(frozen=True)
class Decision:
    router: str
    threshold: float
    win_rate: float
    model: str
    routing_s: float


def router_pair(router: Router, strong: str, weak: str) -> tuple[str | None, str | None]:
    """The pair to ask the router about. Routers that know specific models score the served
    pair when they know both; otherwise they answer for their default pair, as RouteLLM's
    routers always do (they were trained on one pair and applied to any)."""
    if router.models:
        from switchllm.serving.pairs import known_name

        known = known_name(router, strong), known_name(router, weak)
        if known[0] and known[1]:
            return known
    return None, None


def resolve_threshold(router: Router, name: str, request: RouteRequest) -> float:
    if request.threshold is not None:
        return request.threshold
    share = request.strong_share if request.strong_share is not None else 0.5
    try:
        threshold = router.threshold_for_strong_share(share)
    except Exception as exc:  # a card without calibration quantiles
        raise ModelNameError(
            f"router {name!r} cannot map a strong share to a threshold: {exc}; "
            "give a threshold instead (router-<router>-<threshold>)"
        ) from None
    return float(min(max(threshold, 0.0), 1.0))


class RouterSet:
    """The routers a server or controller offers, by name, loaded once."""

    def __init__(self, specs: dict[str, str] | Sequence[str]) -> None:
        if not isinstance(specs, dict):
            specs = {name: name for name in specs}
        self.routers: dict[str, Router] = {name: load_router(spec) for name, spec in specs.items()}

    def get(self, name: str) -> Router:
        router = self.routers.get(name)
        if router is None:
            raise ModelNameError(
                f"unknown router {name!r}; this server offers: {', '.join(self.routers)}",
                status=404,
                code="model_not_found",
            )
        return router

    def threshold(self, name: str, request: RouteRequest) -> float:
        router = self.get(name)
        if request.threshold is not None:
            return check_threshold(request.threshold)
        return resolve_threshold(router, name, request)

    def resolve(self, name: str, request: RouteRequest) -> tuple[float, str | None]:
        """The threshold to serve `request` with, and a warning when the client's threshold
        is outside what the router's card saw in calibration (see serving.thresholds)."""
        if not hasattr(self, "_advisor"):
            from switchllm.serving.thresholds import ThresholdAdvisor

            self._advisor = ThresholdAdvisor()
        request, warning = self._advisor(self.get(name), name, request)
        return self.threshold(name, request), warning

    # Mapping-style access, as RouteLLM's `controller.routers["mf"]`.
    def __getitem__(self, name: str) -> Router:
        return self.routers[name]

    def __contains__(self, name: object) -> bool:
        return name in self.routers

    def __iter__(self):  # noqa: ANN204 - iterator over router names
        return iter(self.routers)

    def __len__(self) -> int:
        return len(self.routers)

    def keys(self):  # noqa: ANN201 - dict keys view
        return self.routers.keys()


def choose(win_rate: float, threshold: float, strong: str, weak: str) -> str:
    """RouteLLM's rule: strong when the win rate reaches the threshold."""
    return strong if win_rate >= threshold else weak


# What a batch groups its requests by: ("pair", (strong, weak)) for a win rate, or
# ("group", chooser) for a route group's choice among N models.
BatchKey = tuple[str, Any]


def run_isolated(keys: Sequence[Hashable], payloads: Sequence[Any],
                 run: Callable[[Any, list[Any]], list[Any]]) -> list[Any]:
    """`run(key, payloads)` once per distinct key (nearly always just once), answers back in
    input order. A call that fails is retried item by item, so a prompt that breaks the router
    fails alone: its slot holds the exception."""
    results: list[Any] = [None] * len(payloads)
    groups: dict[Hashable, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    for key, indices in groups.items():
        try:
            answers = run(key, [payloads[i] for i in indices])
        except Exception as exc:  # noqa: BLE001 - isolate the request that broke the batch
            if len(indices) == 1:
                results[indices[0]] = exc
                continue
            for i in indices:
                try:
                    results[i] = run(key, [payloads[i]])[0]
                except Exception as exc:  # noqa: BLE001 - this request alone fails
                    results[i] = exc
            continue
        for i, answer in zip(indices, answers, strict=True):
            results[i] = answer
    return results


def _rates(router: Router, prompts: list[str], pair: tuple[str | None, str | None]
           ) -> list[float]:
    rates = router.win_rate(prompts, pair[0], pair[1])
    return [float(r) for r in np.asarray(rates, dtype=float).reshape(-1)]


def batch_win_rates(router: Router, items: Sequence[tuple[str, tuple[str | None, str | None]]]
                    ) -> list[float | Exception]:
    """Win rates of (prompt, pair) items, one `win_rate` call per distinct pair, each failing
    prompt alone (run_isolated). Used by the Ray Serve router replicas."""
    return run_isolated([pair for _, pair in items], [prompt for prompt, _ in items],
                        lambda pair, prompts: _rates(router, prompts, pair))


class MicroBatcher:
    """Collects concurrent routing requests for one router into one router call per kind:
    pair win rates (`win_rate`) into one `win_rate` call per pair, and route-group choices
    (`choose`) into one `ModelChooser.choose` call per group.

    A batch starts when the first request arrives after `window_s` (0: on the next event-loop
    turn); requests that arrive while a batch is computing join the next batch, which starts as
    soon as the previous one finishes. The computation runs on a single worker thread per router
    (routers need not be thread-safe)."""

    def __init__(self, router: Router, window_s: float = 0.001, torch_threads: int = 0) -> None:
        self.router = router
        self.window_s = window_s
        self.torch_threads = torch_threads  # 0: adaptive (see _set_threads)
        self._threads = 0
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="switchllm-router")
        self._pending: list[tuple[BatchKey, Any, asyncio.Future[Any]]] = []
        self._busy = False
        self._scheduled = False
        self.batches = 0  # number of batches computed, for tests and metrics
        self.largest_batch = 0
        self.group_calls = 0  # ModelChooser.choose calls made (one per group per batch)
        # The random router only draws a number: handing it to the worker thread and back cost
        # 67 us of CPU a decision one at a time, against 5 us inline (bench/server.py --parts,
        # "routing"; at 64 at once a batch shares the hop and both cost 5 us), so it runs inline.
        self.inline = router.kind == "random"

    async def win_rate(self, prompt: str, pair: tuple[str | None, str | None]) -> float:
        if self.inline:
            self.batches += 1
            self.largest_batch = max(self.largest_batch, 1)
            rate = _rates(self.router, [prompt], pair)[0]
            return rate if math.isfinite(rate) else 0.0
        return await self._submit(("pair", pair), prompt)

    async def choose(self, chooser: ModelChooser, prompt: str, input_tokens: int) -> Choice:
        """The route group's choice for one prompt, batched with concurrent ones."""
        return await self._submit(("group", chooser), (prompt, input_tokens))

    async def _submit(self, key: BatchKey, payload: Any) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending.append((key, payload, future))
        if not self._busy and not self._scheduled:
            self._scheduled = True
            if self.window_s > 0:
                loop.call_later(self.window_s, self._start_batch, loop)
            else:
                loop.call_soon(self._start_batch, loop)
        return await future

    def _start_batch(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        batch = [item for item in batch if not item[2].done()]  # cancelled requests
        if not batch:
            return
        self._busy = True
        self.batches += 1
        self.largest_batch = max(self.largest_batch, len(batch))
        work = loop.run_in_executor(self._executor, self._compute, batch)
        work.add_done_callback(lambda done: self._finish(loop, batch, done))

    def _compute(self, batch: list) -> list[Any]:
        self._set_threads()
        return run_isolated([key for key, _, _ in batch], [payload for _, payload, _ in batch],
                            self._run)

    def _run(self, key: BatchKey, payloads: list[Any]) -> list[Any]:
        kind, what = key
        if kind == "group":
            self.group_calls += 1
            return what.choose([p for p, _ in payloads], [t for _, t in payloads])
        return _rates(self.router, payloads, what)

    def _set_threads(self) -> None:
        """Torch threads for router compute: `torch_threads` if set, else all cores. Measured on an
        idle 2-core host (bench/server.py, mf): 2 threads add 7.9 ms p50 at concurrency 1 and
        serve 269 req/s at 64 clients, against 12.5 ms and 245 req/s with 1 thread for small
        batches. On a host busy with other work, oversubscribed threads spin against each
        other (a single embedding took ~1 s with 2 threads on a loaded 2-core machine): set
        `router_threads: 1` there."""
        torch = sys.modules.get("torch")
        if torch is None:
            return
        wanted = self.torch_threads or (os.cpu_count() or 1)
        if wanted != self._threads:
            torch.set_num_threads(wanted)
            self._threads = wanted

    def _finish(self, loop: asyncio.AbstractEventLoop, batch: list, done: asyncio.Future) -> None:
        self._busy = False
        error = done.exception()
        rates = None if error else done.result()
        for i, (_, _, future) in enumerate(batch):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            elif rates is not None:
                answer = rates[i]
                if isinstance(answer, Exception):
                    future.set_exception(answer)
                elif isinstance(answer, float):
                    future.set_result(answer if math.isfinite(answer) else 0.0)
                else:  # a route group's Choice
                    future.set_result(answer)
        if self._pending and not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._start_batch, loop)

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class AsyncRouting:
    """The server's router front end: one MicroBatcher per router."""

    def __init__(
        self, routers: RouterSet, strong: str, weak: str, window_s: float, torch_threads: int = 0,
        max_prompt_chars: int = MAX_PROMPT_CHARS,
    ) -> None:
        self.routers = routers
        self.max_prompt_chars = max_prompt_chars
        self.strong = strong
        self.weak = weak
        self.batchers: dict[str, MicroBatcher] = {}
        for name, router in routers.routers.items():
            # The random router costs nothing to run: waiting to batch it only adds latency.
            window = 0.0 if router.kind == "random" else window_s
            self.batchers[name] = MicroBatcher(router, window, torch_threads)

    async def decide(self, name: str, threshold: float, prompt: str) -> Decision:
        router = self.routers.get(name)
        started = time.perf_counter()
        pair = router_pair(router, self.strong, self.weak)
        rate = await self.batchers[name].win_rate(
            routable_text(prompt, self.max_prompt_chars), pair)
        model = choose(rate, threshold, self.strong, self.weak)
        return Decision(name, threshold, rate, model, time.perf_counter() - started)

    async def warm_up(self) -> None:
        """Run each router once (loads embedding models, builds caches) before traffic, so the
        first request does not pay for it."""
        for name, batcher in self.batchers.items():
            router = self.routers.get(name)
            # A text no cache holds, so embedding models really load now.
            text = f"warm-up {time.time_ns()}"
            await batcher.win_rate(text, router_pair(router, self.strong, self.weak))

    def close(self) -> None:
        for batcher in self.batchers.values():
            batcher.close()
