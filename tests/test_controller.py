"""The Controller, a RouteLLM-compatible drop-in for the OpenAI client, on a loopback upstream."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from switchllm import routers as router_registry
from switchllm.controller import AsyncController, Controller
from switchllm.errors import SwitchLLMError
from tests.serving_fixtures import FakeUpstream, KeywordRouter

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(autouse=True)
def _reset(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def client(upstream: FakeUpstream) -> Controller:
    return Controller(routers=["random"], strong_model="strong", weak_model="weak",
                      api_base=upstream.base_url, api_key="k")


def test_routellm_style_calls(client: Controller, upstream: FakeUpstream) -> None:
    response = client.chat.completions.create(model="router-random-0", messages=HELLO)
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert response.model == "strong"
    keyword_form = client.chat.completions.create(router="random", threshold=1.0, messages=HELLO,
                                                  temperature=0.2, seed=3)
    assert keyword_form.model == "weak"
    assert upstream.seen[1].body["temperature"] == 0.2 and upstream.seen[1].body["seed"] == 3
    assert upstream.seen[0].headers["authorization"] == "Bearer k"
    assert dict(client.model_counts["random"]) == {"strong": 1, "weak": 1}


def test_route_only_decides(client: Controller, upstream: FakeUpstream) -> None:
    assert client.route("hi", "random", 0.0) == "strong"
    assert client.route("hi", "random", 1.0) == "weak"
    assert upstream.seen == []
    rates = client.batch_calculate_win_rate(["a", "b", "c"], "random")
    assert rates.shape == (3,) and ((rates >= 0) & (rates <= 1)).all()


def test_stream_and_async(client: Controller) -> None:
    chunks = list(client.chat.completions.create(model="router-random-1", messages=HELLO,
                                                 stream=True))
    assert chunks and all(isinstance(c, openai.types.chat.ChatCompletionChunk) for c in chunks)
    assert all(c.model == "weak" for c in chunks)

    async def main() -> tuple:
        one = await client.chat.completions.acreate(model="router-random-0", messages=HELLO)
        stream = await client.chat.completions.acreate(model="router-random-0", messages=HELLO,
                                                       stream=True)
        return one, [c async for c in stream]

    one, streamed = asyncio.run(main())
    assert one.model == "strong" and all(c.model == "strong" for c in streamed)


def test_async_controller(upstream: FakeUpstream) -> None:
    client = AsyncController(routers=["random"], strong_model="strong", weak_model="weak",
                             api_base=upstream.base_url)
    response = asyncio.run(client.chat.completions.create(model="router-random-s1.0",
                                                          messages=HELLO))
    assert response.model == "strong"


def test_falls_back_when_chosen_model_fails(client: Controller, upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").fail_status = 503
    client._client("strong", False).max_retries = 0
    response = client.chat.completions.create(model="router-random-0", messages=HELLO)
    assert response.model == "weak"


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"model": "router-nope-0.5"}, "unknown router"),
        ({"model": "router-random-2"}, "[0, 1]"),
        ({"model": "gpt-4o"}, "not a router model name"),
        ({"router": "random"}, "threshold"),
    ],
)
def test_bad_names_raise_clear_errors(client: Controller, kwargs: dict, needle: str) -> None:
    with pytest.raises(SwitchLLMError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        client.chat.completions.create(messages=HELLO, **kwargs)


def test_learned_router_card_via_routellm_config(upstream: FakeUpstream, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(router_registry.ROUTER_KINDS, "keyword",
                        "tests.serving_fixtures:KeywordRouter")
    card = KeywordRouter(keywords=["integral"]).save(tmp_path / "card")
    # RouteLLM's config shape: {router: {"checkpoint_path": ...}}
    monkeypatch.setitem(router_registry.ROUTER_KINDS, "mf", "tests.serving_fixtures:KeywordRouter")
    client = Controller(routers=["mf"], strong_model="strong", weak_model="weak",
                        config={"mf": {"checkpoint_path": str(card)}}, api_base=upstream.base_url)
    hard = [{"role": "user", "content": [{"type": "text", "text": "solve this integral"}]}]
    assert client.chat.completions.create(model="router-mf-0.5", messages=hard).model == "strong"
    assert client.chat.completions.create(model="router-mf-0.5", messages=HELLO).model == "weak"


def test_missing_upstream_key_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GROQ_API_KEY", raising=False)
    client = Controller(routers=["random"], strong_model="gpt-4o", weak_model="groq/llama3-8b")
    with pytest.raises(SwitchLLMError, match="GROQ_API_KEY"):
        client.chat.completions.create(model="router-random-1", messages=HELLO)
