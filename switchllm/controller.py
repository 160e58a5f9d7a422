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
from switchllm.serving.pairs import state_pairs
from switchllm.serving.providers import resolve_model

__all__ = ["GPT_4_AUGMENTED_CONFIG", "AsyncController", "Controller", "ModelPair", "RoutingError"]

log = logging.getLogger("switchllm.controller")

class Controller:
    """Routes chat completions between a strong and a weak model (RouteLLM-compatible)."""

    def __init__(
        self,
        routers: Sequence[str],
        strong_model: str,
        weak_model: str,
        config: Mapping[str, Any] | str | Path | None = None,
        api_base: str | None = None,
        api_key: str | None = None,
        progress_bar: bool = False,
    ) -> None:
        raw: dict[str, Any] = {}
        if isinstance(config, str | Path):
            raw = load_yaml(config)
        elif isinstance(config, Mapping):
            raw = dict(config)
        self.strong_model = strong_model
        self.weak_model = weak_model
        self.model_pair = ModelPair(strong=strong_model, weak=weak_model)
        self.api_base = api_base
        self.api_key = api_key
        self.progress_bar = progress_bar
        if strong_model == weak_model:
            raise SwitchLLMError(f"strong and weak model are the same: {strong_model!r}")
        self.routers = RouterSet(routers_from(list(routers), raw))
        state_pairs(self.routers.routers, strong_model, weak_model)
        self.model_counts: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        self._specs = self._model_specs(raw, config if isinstance(config, str | Path) else None)
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
        for name in (self.strong_model, self.weak_model):
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
        router_name, model = self._decide(kwargs, router, threshold)
        response = self._call(model, kwargs, fallback=True)
        self.model_counts[router_name][response.model] += 1
        return response

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
