"""RouteLLM's Python names and behaviours, as RouteLLM code uses them, on a loopback upstream."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator

import openai
import pytest

from switchllm.controller import GPT_4_AUGMENTED_CONFIG, Controller, ModelPair, RoutingError
from switchllm.routers.routers import ROUTER_CLS
from tests.serving_fixtures import FakeUpstream, free_port

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


def test_routellm_names_exist() -> None:
    assert {"random", "mf", "sw_ranking", "bert", "causal_llm"} <= set(ROUTER_CLS.keys())
    assert ROUTER_CLS["random"]().win_rate(["x"]).shape == (1,)
    with pytest.raises(KeyError):
        ROUTER_CLS["nope"]
    assert GPT_4_AUGMENTED_CONFIG["mf"]["checkpoint_path"] == "routellm/mf_gpt4_augmented"
    assert ModelPair(strong="a", weak="b").strong == "a"


def test_controller_attributes_and_router_methods(client: Controller) -> None:
    assert client.model_pair == ModelPair(strong="strong", weak="weak")
    router = client.routers["random"]
    assert "random" in client.routers and list(client.routers.keys()) == ["random"]
    assert 0.0 <= router.calculate_strong_win_rate("hi") <= 1.0
    assert router.route("hi", 0.0, client.model_pair) == "strong"
    assert router.route("hi", 1.0 + 1e-9, client.model_pair) == "weak"


def test_routing_error_is_raised_for_bad_names(client: Controller) -> None:
    with pytest.raises(RoutingError, match="unknown router 'nope'"):
        client.chat.completions.create(model="router-nope-0.5", messages=HELLO)
    with pytest.raises(RoutingError, match=r"must be in \[0, 1\]"):
        client.chat.completions.create(router="random", threshold=1.5, messages=HELLO)


def test_dict_style_access_like_routellm_docs(client: Controller) -> None:
    response = client.chat.completions.create(model="router-random-0", messages=HELLO)
    assert isinstance(response, openai.types.chat.ChatCompletion)
    assert response.choices[0]["message"]["content"] == "Hello from the upstream"
    assert response["model"] == "strong" and response.get("missing") is None
    with pytest.raises(KeyError):
        response.choices[0]["nope"]
    chunks = list(client.chat.completions.create(model="router-random-0", messages=HELLO,
                                                 stream=True))
    text = "".join(c.choices[0]["delta"]["content"] or "" for c in chunks if c.choices)
    assert text == "Hello from the upstream"


def test_unknown_keyword_arguments_reach_the_upstream_body(
    client: Controller, upstream: FakeUpstream
) -> None:
    client.chat.completions.create(model="router-random-0", messages=HELLO,
                                   repetition_penalty=1.1, top_k=5, temperature=0.3,
                                   extra_body={"min_p": 0.05})
    body = upstream.seen[0].body
    assert body["repetition_penalty"] == 1.1 and body["top_k"] == 5
    assert body["min_p"] == 0.05 and body["temperature"] == 0.3


def test_fallback_is_visible(upstream: FakeUpstream, caplog: pytest.LogCaptureFixture) -> None:
    """The weak model is down: the strong one answers, and counts and logs say so."""
    dead = f"http://127.0.0.1:{free_port()}/v1"
    client = Controller(
        routers=["random"], strong_model="strong", weak_model="weak", api_key="k",
        config={"models": {"strong": {"base_url": upstream.base_url},
                           "weak": {"base_url": dead}}},
    )
    client._client("weak", False).max_retries = 0
    with caplog.at_level(logging.WARNING, logger="switchllm.controller"):
        response = client.chat.completions.create(model="router-random-1", messages=HELLO)
    assert client.route("hello", "random", 1.0) == "weak"  # the decision
    assert response.model == "strong"  # the answer
    assert dict(client.model_counts["random"]) == {"strong": 1}
    assert any("'weak' failed" in r.getMessage() and "'strong' answers" in r.getMessage()
               for r in caplog.records)


def test_async_counts_the_answering_model(client: Controller) -> None:
    response = asyncio.run(
        client.chat.completions.acreate(model="router-random-1", messages=HELLO))
    assert response.model == "weak"
    assert response.choices[0]["message"]["role"] == "assistant"
    assert dict(client.model_counts["random"]) == {"weak": 1}
