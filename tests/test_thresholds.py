"""Thresholds outside a card's calibrated range warn, and RouteLLM's router-mf-0.11593 is
served as RouteLLM meant it (router-mf-s0.5)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from switchllm import routers as router_registry
from switchllm.controller import Controller
from switchllm.routers import load_router
from switchllm.serving import create_app
from switchllm.serving.config import build_config
from switchllm.serving.thresholds import implied_strong_share
from tests.serving_fixtures import FakeUpstream, KeywordRouter, ServerThread

HELLO = [{"role": "user", "content": "hello"}]


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def keyword_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(router_registry.ROUTER_KINDS, "keyword", "tests.serving_fixtures:KeywordRouter")
        router = KeywordRouter(keywords=["proof"])
        router.calibrate(["a proof", "hi", "hello", "weather"])  # win rates 0.1 .. 0.9
        yield router.save(tmp_path_factory.mktemp("card") / "keyword")


@pytest.fixture(scope="module")
def client(upstream: FakeUpstream, keyword_card: Path) -> Iterator[openai.OpenAI]:
    config = build_config(routers={"kw": str(keyword_card), "mf": "mf"}, strong_model="strong",
                          weak_model="weak", base_url=upstream.base_url,
                          overrides={"log_path": None})
    server = ServerThread(create_app(config)).start()
    yield openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
    server.stop()


def _call(client: openai.OpenAI, model: str):  # noqa: ANN202 - a raw openai response
    return client.chat.completions.with_raw_response.create(model=model, messages=HELLO)


def test_out_of_range_threshold_is_served_with_a_warning(
    client: openai.OpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="switchllm.serving"):
        first, second = _call(client, "router-kw-0.05"), _call(client, "router-kw-0.05")
    for raw in (first, second):  # every response says so
        warning = raw.headers["x-switchllm-warning"]
        assert "outside the win rates router kw saw in calibration (0.1000..0.9000)" in warning
        assert "about 100% of calls to the strong model" in warning
        assert "router-kw-s0.5" in warning
        assert raw.parse().model == "strong"  # the threshold is still honoured
    logged = [r for r in caplog.records if "router kw saw" in r.getMessage()]
    assert len(logged) == 1  # logged on first use only
    high = _call(client, "router-kw-0.95")
    assert "about 0% of calls to the strong model" in high.headers["x-switchllm-warning"]
    assert high.parse().model == "weak"
    assert "x-switchllm-warning" not in _call(client, "router-kw-0.5").headers
    assert "x-switchllm-warning" not in _call(client, "router-kw-s0.2").headers


def test_routellm_published_mf_threshold_is_served_as_half_strong(
    client: openai.OpenAI
) -> None:
    raw = _call(client, "router-mf-0.11593")
    mf = load_router("mf")
    expected = mf.threshold_for_strong_share(0.5)
    assert raw.headers["x-switchllm-threshold"] == f"{expected:.6g}"
    warning = raw.headers["x-switchllm-warning"]
    assert "RouteLLM's threshold for about 50% strong calls" in warning
    assert "served as router-mf-s0.5" in warning
    assert implied_strong_share(mf, expected) == pytest.approx(0.5, abs=0.01)


def test_controller_warns_on_first_use(upstream: FakeUpstream, keyword_card: Path,
                                       caplog: pytest.LogCaptureFixture) -> None:
    client = Controller(routers=[f"kw={keyword_card}"], strong_model="strong",
                        weak_model="weak", api_base=upstream.base_url, api_key="k")
    with caplog.at_level(logging.WARNING, logger="switchllm.serving"):
        for _ in range(3):
            assert client.chat.completions.create(model="router-kw-0.99",
                                                  messages=HELLO).model == "weak"
    assert sum("about 0% of calls" in r.getMessage() for r in caplog.records) == 1
