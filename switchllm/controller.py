"""`Controller`: a drop-in for the OpenAI Python client that routes each request, compatible with
RouteLLM's controller (change `from routellm.controller import Controller` to
`from switchllm.controller import Controller`).

    client = Controller(routers=["mf"], strong_model="gpt-4o", weak_model="gpt-4o-mini")
    response = client.chat.completions.create(
        model="router-mf-s0.5", messages=[{"role": "user", "content": "Hello!"}])
    response.model   # the model that answered

`create(router="mf", threshold=0.6, ...)` works too, as does a strong share
(`model="router-mf-s0.3"`), `stream=True`, the async `acreate` (or `AsyncController`), and
`route()` which only decides. Responses are the `openai` package's own types.

Upstreams: a serving YAML config (see switchllm.serving.config) or, for the models it does
not describe, litellm-style resolution (switchllm.serving.providers): `api_base`/`api_key`,
provider prefixes ("groq/llama3-8b-8192", "anyscale/..."), $OPENAI_BASE_URL / $OPENAI_API_KEY.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from switchllm.compat import (
    GPT_4_AUGMENTED_CONFIG,
    ModelPair,
    RoutingError,
    split_extra_kwargs,
    with_dict_access,
)
from switchllm.errors import SwitchLLMError
from switchllm.routers.choice import Choice
from switchllm.serving import (
    ModelNameError,
    ModelSpec,
    RouteRequest,
    RouterSet,
    build_config,
    check_threshold,
    choose,
    load_yaml,
    parse_router_model,
    prompt_text,
    routable_text,
    router_pair,
    routers_from,
)
from switchllm.serving.groups import GroupRouting, parse_routes, request_input_tokens
from switchllm.serving.pairs import state_pairs
from switchllm.serving.providers import resolve_model

__all__ = ["GPT_4_AUGMENTED_CONFIG", "AsyncController", "Controller", "ModelPair", "RoutingError"]

log = logging.getLogger("switchllm.controller")

class Controller:
    """Routes chat completions between a strong and a weak model (RouteLLM-compatible)."""

    def __init__(
        self,
        routers: Sequence[str] | None = None,
        strong_model: str | None = None,
        weak_model: str | None = None,
        config: Mapping[str, Any] | str | Path | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        progress_bar: bool = False,
        *,
        routes: Mapping[str, Mapping[str, Any]] | None = None,
        models: Sequence[str] | None = None,
        prices: Mapping[str, Any] | None = None,
        objective: Mapping[str, Any] | None = None,
    ) -> None:
        raw: dict[str, Any] = {}
        if isinstance(config, str | Path):
            raw = load_yaml(config)
        elif isinstance(config, Mapping):
            raw = dict(config)
        # Route groups (choosing among N models): the config's, `routes=`, and `models=`
        # (a group named "auto" routed by the first router).
        group_specs = {**(raw.pop("routes", None) or {}), **(routes or {})}
        routers = list(routers or [])
        if models is not None:
            if not routers:
                raise SwitchLLMError("models= needs a router to choose with: routers=['mf']")
            group_specs["auto"] = {"router": routers[0], "models": list(models),
                                   "objective": objective or {"max_quality": True}}
        group_models = list(dict.fromkeys(
            m for spec in group_specs.values() for m in (spec.get("models") or [])))
        prices = _parse_prices(prices or {})
        if group_models and (strong_model is None or weak_model is None):
            # pair routing defaults to the priciest and the cheapest group model
            by_price = sorted(group_models, key=lambda m: sum(prices.get(m, (0.0, 0.0))))
            strong_model = strong_model or by_price[-1]
            weak_model = weak_model or by_price[0]
        if not strong_model or not weak_model:
            raise SwitchLLMError("give strong_model= and weak_model=, or models=/routes=")
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.model_pair = ModelPair(strong=strong_model, weak=weak_model)
        self.api_base = api_base
        self.api_key = api_key
        self.progress_bar = progress_bar
        if strong_model == weak_model:
            raise SwitchLLMError(f"strong and weak model are the same: {strong_model!r}")
        for spec in group_specs.values():
            if spec.get("router") and spec["router"] not in routers:
                routers.append(spec["router"])
        self.routers = RouterSet(routers_from(routers, raw))
        state_pairs(self.routers.routers, strong_model, weak_model)
        self.model_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._names = list(dict.fromkeys([strong_model, weak_model, *group_models]))
        self._specs = self._model_specs(raw, config if isinstance(config, str | Path) else None)
        for name, (input_price, output_price) in prices.items():
            if name in self._specs:
                self._specs[name].input_price = input_price
                self._specs[name].output_price = output_price
        self.groups = GroupRouting(parse_routes(group_specs, self._specs, "routes"),
                                   self.routers, self._specs)
        self.last_choice: Choice | None = None  # the latest route-group decision
        self._clients: dict[tuple[str, bool], Any] = {}
        # The OpenAI SDK's shape: client.chat.completions.create / acreate.
        self.chat = SimpleNamespace(
            completions=SimpleNamespace(create=self.completion, acreate=self.acompletion)
        )

    # ---- routing --------------------------------------------------------------------------
    def _request(self, model: str | None, router: str | None, threshold: Any) -> RouteRequest:
        if model is not None:
            request = parse_router_model(model)
            if request is None:
                raise ModelNameError(
                    f"model {model!r} is not a router model name: use "
                    "router-<router>-<threshold> (e.g. router-mf-0.6) or router-<router>-s<share>"
                )
            return request
        if router is None or threshold is None:
            raise ModelNameError(
                "give model='router-<router>-<threshold>' or router= and threshold="
            )
        if isinstance(threshold, str) and threshold[:1] in "sS":
            return RouteRequest(router, strong_share=check_threshold(threshold[1:], "share"))
        return RouteRequest(router, threshold=check_threshold(threshold))

    def _threshold(self, request: RouteRequest) -> float:
        # out-of-range thresholds: a warning logged on first use (serving.thresholds)
        return self.routers.resolve(request.router, request)[0]

    def _win_rates(self, router_name: str, prompts: Sequence[str]) -> np.ndarray:
        router = self.routers.get(router_name)
        strong, weak = router_pair(router, self.strong_model, self.weak_model)
        texts = [routable_text(p) for p in prompts]
        return np.asarray(router.win_rate(texts, strong, weak), dtype=float)

    def route(self, prompt: str, router: str, threshold: float) -> str:
        """The model `router` picks for `prompt` at `threshold`, without calling it."""
        threshold = self._threshold(RouteRequest(router, threshold=check_threshold(threshold)))
        rate = float(self._win_rates(router, [prompt])[0])
        return choose(rate, threshold, self.strong_model, self.weak_model)

    def batch_calculate_win_rate(self, prompts: Any, router: str) -> Any:
        """Win rates for many prompts (a list, or a pandas Series as in RouteLLM)."""
        rates = self._win_rates(router, [str(p) for p in prompts])
        if hasattr(prompts, "index") and hasattr(prompts, "map"):  # pandas Series in, Series out
            return type(prompts)(rates, index=prompts.index)
        return rates

    def _decide(
        self, kwargs: dict[str, Any], router: str | None, threshold: Any
    ) -> tuple[str, str]:
        request = self._request(kwargs.get("model"), router, threshold)
        value = self._threshold(request)
        prompt = prompt_text(kwargs.get("messages") or [])
        model = choose(float(self._win_rates(request.router, [prompt])[0]), value,
                       self.strong_model, self.weak_model)
        return request.router, model

    async def _adecide(
        self, kwargs: dict[str, Any], router: str | None, threshold: Any
    ) -> tuple[str, str]:
        request = self._request(kwargs.get("model"), router, threshold)
        value = self._threshold(request)
        prompt = prompt_text(kwargs.get("messages") or [])
        rates = await asyncio.to_thread(self._win_rates, request.router, [prompt])
        model = choose(float(rates[0]), value, self.strong_model, self.weak_model)
        return request.router, model

    # ---- upstream clients -----------------------------------------------------------------
    def _model_specs(self, raw: dict[str, Any], path: str | Path | None) -> dict[str, ModelSpec]:
        specs: dict[str, ModelSpec] = {}
        if raw.get("models"):
            config = build_config(raw=raw, config_path=path, routers=["random"],
                                  strong_model=self.strong_model, weak_model=self.weak_model)
            specs.update(config.models)
        for name in self._names:
            if name in specs and name in (raw.get("models") or {}):
                continue
            specs[name] = resolve_model(name, base_url=self.api_base, api_key=self.api_key)
        return specs

    def _client(self, model: str, is_async: bool) -> Any:
        key = (model, is_async)
        if key not in self._clients:
            import openai

            spec = self._specs[model]
            api_key = spec.resolve_key()
            if api_key is None:
                if spec.api_key_env and not spec.base_url.startswith(("http://localhost",
                                                                       "http://127.0.0.1")):
                    raise SwitchLLMError(
                        f"no API key for model {model!r}: set ${spec.api_key_env} or pass api_key="
                    )
                api_key = "EMPTY"  # local servers take any key
            cls = openai.AsyncOpenAI if is_async else openai.OpenAI
            self._clients[key] = cls(base_url=spec.base_url, api_key=api_key)
        return self._clients[key]

    def _other(self, model: str) -> str:
        return self.weak_model if model == self.strong_model else self.strong_model

    # ---- completions ----------------------------------------------------------------------
    def completion(
        self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any
    ) -> Any:
        """`chat.completions.create`: route, then call the chosen model (falling back to the
        other one if it fails to answer)."""
        order = self._group_order(kwargs)
        if order is not None:
            response = self._call_in_order(order, kwargs)
            # the model that answered, which after a fallback is not the chosen one
            self.model_counts[kwargs["model"]][response.model] += 1
            return response
        router_name, model = self._decide(kwargs, router, threshold)
        response = self._call(model, kwargs, fallback=True)
        self.model_counts[router_name][response.model] += 1
        return response

    # ---- route groups ---------------------------------------------------------------------
    def route_among(self, prompt: str, group: str) -> Choice:
        """The choice route group `group` (a configured name or `auto:<router>:<objective>
        [:<models>]`) makes for `prompt`, without calling a model: the model, the fallback
        order, predicted quality and expected cost per candidate."""
        chooser = self.groups.resolve(group)
        if chooser is None:
            raise ModelNameError(
                f"no route group {group!r}; groups: {', '.join(self.groups.groups)}")
        return chooser.choose([routable_text(prompt)],
                              [request_input_tokens([{"content": prompt}])])[0]

    def _group_order(self, kwargs: dict[str, Any]) -> list[str] | None:
        name = kwargs.get("model")
        if not isinstance(name, str) or parse_router_model(name) is not None:
            return None
        chooser = self.groups.resolve(name)
        if chooser is None:
            return None
        messages = kwargs.get("messages") or []
        choice = chooser.choose([routable_text(prompt_text(messages))],
                                [request_input_tokens(messages)])[0]
        self.last_choice = choice  # model_counts is counted once a model has answered
        return list(choice.order)

    def _call_in_order(self, order: list[str], kwargs: dict[str, Any]) -> Any:
        """Call the candidates in order until one answers (fallback by predicted utility)."""
        import openai

        for i, model in enumerate(order):
            try:
                return self._call(model, kwargs, fallback=False)
            except (openai.APIConnectionError, openai.InternalServerError,
                    openai.RateLimitError, openai.AuthenticationError) as exc:
                if i == len(order) - 1:
                    raise
                _warn_fallback(model, order[i + 1], exc)
        raise AssertionError("unreachable: a group has at least two models")

    async def _acall_in_order(self, order: list[str], kwargs: dict[str, Any]) -> Any:
        import openai

        for i, model in enumerate(order):
            try:
                return await self._acall(model, kwargs, fallback=False)
            except (openai.APIConnectionError, openai.InternalServerError,
                    openai.RateLimitError, openai.AuthenticationError) as exc:
                if i == len(order) - 1:
                    raise
                _warn_fallback(model, order[i + 1], exc)
        raise AssertionError("unreachable: a group has at least two models")

    def _call(self, model: str, kwargs: dict[str, Any], fallback: bool) -> Any:
        import openai

        sent = split_extra_kwargs({**kwargs, "model": self._specs[model].sent_name})
        try:
            response = self._client(model, False).chat.completions.create(**sent)
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError,
                openai.AuthenticationError) as exc:
            if not fallback:
                raise
            _warn_fallback(model, self._other(model), exc)
            return self._call(self._other(model), kwargs, fallback=False)
        if kwargs.get("stream"):
            return RoutedStream(response, model)
        response = with_dict_access(response)
        response.model = model
        return response

    async def acompletion(
        self, *, router: str | None = None, threshold: float | None = None, **kwargs: Any
    ) -> Any:
        """The async variant (`chat.completions.acreate`)."""
        order = await asyncio.to_thread(self._group_order, kwargs)
        if order is not None:
            response = await self._acall_in_order(order, kwargs)
            self.model_counts[kwargs["model"]][response.model] += 1
            return response
        router_name, model = await self._adecide(kwargs, router, threshold)
        response = await self._acall(model, kwargs, fallback=True)
        self.model_counts[router_name][response.model] += 1
        return response

    async def _acall(self, model: str, kwargs: dict[str, Any], fallback: bool) -> Any:
        import openai

        sent = split_extra_kwargs({**kwargs, "model": self._specs[model].sent_name})
        try:
            response = await self._client(model, True).chat.completions.create(**sent)
        except (openai.APIConnectionError, openai.InternalServerError, openai.RateLimitError,
                openai.AuthenticationError) as exc:
            if not fallback:
                raise
            _warn_fallback(model, self._other(model), exc)
            return await self._acall(self._other(model), kwargs, fallback=False)
        if kwargs.get("stream"):
            return AsyncRoutedStream(response, model)
        response = with_dict_access(response)
        response.model = model
        return response


def _warn_fallback(failed: str, other: str, exc: Exception) -> None:
    # The error's class and status only: its message may quote the request or the key.
    status = getattr(exc, "status_code", None)
    log.warning("model %r failed (%s%s); %r answers instead", failed, type(exc).__name__,
                f" HTTP {status}" if status else "", other)


def _parse_prices(prices: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """{model: (input, output)} or {model: {input_price:, output_price:}}, dollars per 1M
    tokens -> {model: (input, output)}."""
    out = {}
    for model, value in prices.items():
        if isinstance(value, Mapping):
            value = (value.get("input_price", 0.0), value.get("output_price", 0.0))
        try:
            input_price, output_price = (float(v) for v in value)
        except (TypeError, ValueError):
            raise SwitchLLMError(
                f"prices[{model!r}] must be (input, output) dollars per 1M tokens, got {value!r}"
            ) from None
        if input_price < 0 or output_price < 0:
            raise SwitchLLMError(f"prices[{model!r}] must not be negative")
        out[str(model)] = (input_price, output_price)
    return out


class AsyncController(Controller):
    """Like Controller, but `chat.completions.create` is a coroutine (like openai.AsyncOpenAI)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.chat = SimpleNamespace(
            completions=SimpleNamespace(create=self.acompletion, acreate=self.acompletion)
        )


class RoutedStream:
    """An openai Stream whose chunks carry the served model name."""

    def __init__(self, stream: Any, model: str) -> None:
        self._stream = stream
        self.model = model
        self.response = getattr(stream, "response", None)

    def __iter__(self) -> Iterator[Any]:
        for chunk in self._stream:
            chunk = with_dict_access(chunk)
            chunk.model = self.model
            yield chunk

    def __enter__(self) -> RoutedStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._stream.close()


class AsyncRoutedStream:
    def __init__(self, stream: Any, model: str) -> None:
        self._stream = stream
        self.model = model
        self.response = getattr(stream, "response", None)

    async def __aiter__(self):  # noqa: ANN204 - async generator
        async for chunk in self._stream:
            chunk = with_dict_access(chunk)
            chunk.model = self.model
            yield chunk

    async def __aenter__(self) -> AsyncRoutedStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await self._stream.close()
