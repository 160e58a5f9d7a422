"""Route groups end to end: a real server with three loopback upstreams at different prices,
`model="auto"` sending cheap prompts to the cheap model and hard ones to the expensive one,
fallback to the next candidate, ad-hoc `auto:` names, the 4xx cases, the decision log and
`switchllm stats`."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchllm import routers as router_registry
from switchllm.cli import main
from switchllm.serving.config import ConfigError, build_config
from switchllm.serving.decision_log import read_records
from switchllm.serving.server import create_app
from tests.serving_fixtures import FakeUpstream, KeywordRouter, KeywordScoreRouter, ServerThread

MODELS = ["big", "mid", "small"]
PRICES = {"big": (10.0, 30.0), "mid": (1.0, 3.0), "small": (0.1, 0.2)}


@pytest.fixture(scope="module")
def cards(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(router_registry.ROUTER_KINDS, "keyword_scores",
                   "tests.serving_fixtures:KeywordScoreRouter")
        mp.setitem(router_registry.ROUTER_KINDS, "keyword", "tests.serving_fixtures:KeywordRouter")
        root = tmp_path_factory.mktemp("cards")
        scorer = KeywordScoreRouter(keywords=["proof"], scored_models=MODELS)
        pair = KeywordRouter(keywords=["proof"])
        pair.calibrate(["a proof", "hi"])
        yield {"scorer": scorer.save(root / "scorer"), "pair": pair.save(root / "pair")}


def raw_config(upstreams: dict[str, FakeUpstream], cards: dict[str, Path], log: Path,
               routes: dict | None = None) -> dict:
    return {
        "routers": {"scorer": str(cards["scorer"]), "pair": str(cards["pair"])},
        "strong_model": "big", "weak_model": "small",
        "models": {m: {"base_url": upstreams[m].base_url, "input_price": PRICES[m][0],
                       "output_price": PRICES[m][1], "output_tokens": 200} for m in MODELS},
        "server": {"retries": 0, "timeout": 2.0},
        "log": {"path": str(log), "flush_ms": 10},
        "routes": routes if routes is not None else {
            "auto": {"router": "scorer", "models": MODELS,
                     "objective": {"quality_target": 0.05}},
            "best": {"router": "scorer", "models": MODELS, "objective": {"max_quality": True}},
        },
    }


@pytest.fixture(scope="module")
def upstreams() -> Iterator[dict[str, FakeUpstream]]:
    ups = {m: FakeUpstream().start() for m in MODELS}
    yield ups
    for up in ups.values():
        up.stop()


@pytest.fixture(scope="module")
def server(upstreams, cards, tmp_path_factory) -> Iterator[tuple[ServerThread, Path]]:  # noqa: ANN001
    log = tmp_path_factory.mktemp("log") / "decisions.sqlite"
    config = build_config(raw=raw_config(upstreams, cards, log))
    thread = ServerThread(create_app(config)).start()
    yield thread, log
    thread.stop()


@pytest.fixture(autouse=True)
def _reset(upstreams: dict[str, FakeUpstream]) -> None:
    for up in upstreams.values():
        up.reset()


def ask(url: str, model: str, text: str) -> httpx.Response:
    return httpx.post(f"{url}/v1/chat/completions", timeout=10, json={
        "model": model, "messages": [{"role": "user", "content": text}]})


def test_auto_sends_cheap_prompts_to_the_cheap_model(server, upstreams) -> None:  # noqa: ANN001
    url = server[0].url
    easy = ask(url, "auto", "say hello")
    hard = ask(url, "auto", "write a proof that primes are infinite")
    assert easy.status_code == hard.status_code == 200
    assert easy.headers["x-switchllm-model"] == "small"
    assert hard.headers["x-switchllm-model"] == "big"
    assert hard.headers["x-switchllm-group"] == "auto"
    assert 0.5 < float(hard.headers["x-switchllm-predicted-quality"]) <= 1
    assert [s.model for s in upstreams["small"].seen] == ["small"]
    assert [s.model for s in upstreams["big"].seen] == ["big"]
    # max quality: everything to big on hard prompts, ties to the cheaper model
    assert ask(url, "best", "a proof").headers["x-switchllm-model"] == "big"


def test_failing_upstream_falls_back_to_the_next_candidate(server, upstreams) -> None:  # noqa: ANN001
    upstreams["small"].behaviour("small").fail_status = 500
    response = ask(server[0].url, "auto", "say hello again")
    assert response.status_code == 200
    # quality_target order on an easy prompt: small, mid, big (cheapest first)
    assert response.headers["x-switchllm-model"] == "mid"
    assert response.headers["x-switchllm-fallback"] == "true"
    assert response.json()["model"].startswith("mid")


def test_models_lists_groups(server) -> None:  # noqa: ANN001
    ids = [m["id"] for m in httpx.get(f"{server[0].url}/v1/models").json()["data"]]
    assert "auto" in ids and "best" in ids and "router-scorer-s0.5" in ids


def test_pair_routing_still_works(server) -> None:  # noqa: ANN001
    response = ask(server[0].url, "router-pair-0.5", "a proof")
    assert response.status_code == 200 and response.headers["x-switchllm-model"] == "big"


def test_adhoc_group_names(server) -> None:  # noqa: ANN001
    url = server[0].url
    r = ask(url, "auto:scorer:wtp=1000000:big,mid,small", "a proof")
    assert r.status_code == 200 and r.headers["x-switchllm-model"] == "small"
    r = ask(url, "auto:scorer:max", "a proof")  # all configured models
    assert r.status_code == 200 and r.headers["x-switchllm-model"] == "big"
    r = ask(url, "auto:scorer:target=0.05:mid,small", "hi")
    assert r.headers["x-switchllm-model"] == "small"


@pytest.mark.parametrize(("model", "status", "needle"), [
    ("auto:scorer:wtp=-1", 400, "lambda must be a number >= 0"),
    ("auto:scorer:fast", 400, "bad objective"),
    ("auto:nope:max", 404, "unknown router 'nope'"),
    ("auto:scorer:max:big,ghost", 404, "'ghost' not configured"),
    ("auto:pair:max", 400, "answers pairs only"),
    ("autox", 404, "is not served here"),
])
def test_bad_group_requests_get_clear_4xx(server, model: str, status: int,  # noqa: ANN001
                                          needle: str) -> None:
    response = ask(server[0].url, model, "hi")
    assert response.status_code == status, response.text
    assert needle in response.json()["error"]["message"]


def test_decision_log_and_stats_show_groups(server, capsys) -> None:  # noqa: ANN001
    thread, log = server
    url = thread.url
    assert ask(url, "auto", "hello there").status_code == 200
    assert ask(url, "auto", "one more proof").status_code == 200
    time.sleep(0.3)  # the log writes every 10 ms
    rows = [r for r in read_records(log) if r["route_group"] == "auto"]
    assert rows
    cheap = next(r for r in rows if r["model"] == "small")
    assert cheap["best_model"] == "big" and cheap["predicted_quality"] is not None
    assert cheap["expected_cost_usd"] > 0
    assert cheap["best_cost_usd"] > cheap["cost_usd"] > 0
    assert main(["stats", "--log", str(log)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("auto") and "ALL" in row)
    assert line.split()[-1].endswith("%") and float(line.split()[-1][:-1]) > 0
    metrics = httpx.get(f"{url}/metrics").text
    assert 'switchllm_group_choices_total{group="auto",model="small"}' in metrics
    assert "switchllm_group_saving_dollars" in metrics


def test_config_errors_at_start_up(upstreams, cards, tmp_path: Path) -> None:  # noqa: ANN001
    log = tmp_path / "log.sqlite"

    def start(routes: dict) -> None:
        create_app(build_config(raw=raw_config(upstreams, cards, log, routes)))

    with pytest.raises(ConfigError, match="ghost are not in models"):
        start({"g": {"router": "scorer", "models": ["big", "ghost"]}})
    with pytest.raises(ConfigError, match="lambda must be a number >= 0"):
        start({"g": {"router": "scorer", "models": MODELS,
                     "objective": {"willingness_to_pay": -5}}})
    with pytest.raises(ConfigError, match="answers pairs only"):
        start({"g": {"router": "pair", "models": MODELS}})
    with pytest.raises(ConfigError, match="unknown setting"):
        start({"g": {"router": "scorer", "models": MODELS, "lambda": 3}})


# ---- the Controller path -----------------------------------------------------------------
def controller_config(upstreams: dict[str, FakeUpstream]) -> dict:
    return {"models": {m: {"base_url": upstreams[m].base_url} for m in MODELS}}


def test_controller_models_and_prices(upstreams, cards) -> None:  # noqa: ANN001
    from switchllm.controller import AsyncController, Controller

    prices = {m: PRICES[m] for m in MODELS}
    client = Controller(routers=[str(cards["scorer"])], models=MODELS, prices=prices,
                        objective={"quality_target": 0.05}, config=controller_config(upstreams))
    # pair routing defaults to the priciest and the cheapest model
    assert (client.strong_model, client.weak_model) == ("big", "small")
    easy = client.chat.completions.create(model="auto",
                                          messages=[{"role": "user", "content": "hi"}])
    hard = client.chat.completions.create(model="auto",
                                          messages=[{"role": "user", "content": "a proof"}])
    assert (easy.model, hard.model) == ("small", "big")
    assert client.last_choice is not None and client.last_choice.model == "big"
    assert client.model_counts["auto"] == {"small": 1, "big": 1}
    choice = client.route_among("hi", "auto")
    assert choice.order == ("small", "mid", "big") and choice.expected_cost["big"] > 0
    # fallback to the next candidate by utility
    upstreams["small"].behaviour("small").fail_status = 500
    again = client.chat.completions.create(model="auto",
                                           messages=[{"role": "user", "content": "hey"}])
    assert again.model == "mid"
    # model_counts records the model that answered, not the failed choice
    assert client.model_counts["auto"] == {"small": 1, "big": 1, "mid": 1}
    assert client.last_choice is not None and client.last_choice.model == "small"

    async_client = AsyncController(routers=[str(cards["scorer"])], models=MODELS, prices=prices,
                                   config=controller_config(upstreams))
    got = asyncio.run(async_client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "a proof"}]))
    assert got.model == "big"
    fell_back = asyncio.run(async_client.chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "hey"}]))
    assert fell_back.model == "mid"
    assert async_client.model_counts["auto"] == {"big": 1, "mid": 1}


def test_controller_routes_and_errors(upstreams, cards) -> None:  # noqa: ANN001
    from switchllm.controller import Controller
    from switchllm.errors import SwitchLLMError

    config = controller_config(upstreams)
    client = Controller(
        routers=["random"], strong_model="big", weak_model="small", config=config,
        routes={"cheap": {"router": str(cards["scorer"]), "models": MODELS,
                          "objective": {"willingness_to_pay": 1e9}}},
        prices={m: {"input_price": PRICES[m][0], "output_price": PRICES[m][1]}
                for m in MODELS})
    reply = client.chat.completions.create(model="cheap",
                                           messages=[{"role": "user", "content": "a proof"}])
    assert reply.model == "small"
    # RouteLLM's pair API is unchanged beside the groups
    pair = client.chat.completions.create(model="router-random-0.0",
                                          messages=[{"role": "user", "content": "x"}])
    assert pair.model == "big"
    with pytest.raises(SwitchLLMError, match="lambda must be a number >= 0"):
        client.chat.completions.create(model=f"auto:{cards['scorer']}:wtp=-2",
                                       messages=[{"role": "user", "content": "x"}])
    with pytest.raises(SwitchLLMError, match="answers pairs only"):
        Controller(routers=["random", str(cards["pair"])], config=config,
                   routes={"g": {"router": str(cards["pair"]), "models": MODELS}})
    with pytest.raises(SwitchLLMError, match="must not be negative"):
        Controller(routers=[str(cards["scorer"])], models=MODELS, config=config,
                   prices={"big": (-1, 0)})


class CountingScoreRouter(KeywordScoreRouter):
    """KeywordScoreRouter that records the prompts of each model_scores call and refuses a
    prompt containing "poison" (a prompt that breaks a batch)."""

    def __init__(self, **kwargs) -> None:  # noqa: ANN003
        super().__init__(**kwargs)
        self.calls: list[list[str]] = []

    def model_scores(self, prompts):  # noqa: ANN001, ANN201
        self.calls.append(list(prompts))
        if any("poison" in p for p in prompts):
            raise ValueError("cannot score this prompt")
        return super().model_scores(prompts)


def test_group_choices_are_micro_batched_with_pair_requests() -> None:
    from switchllm.routers.choice import ModelChooser, Objective
    from switchllm.serving.routing import MicroBatcher

    router = CountingScoreRouter(keywords=["proof"], scored_models=MODELS)
    chooser = ModelChooser(router, MODELS, {m: p[0] for m, p in PRICES.items()},
                           {m: p[1] for m, p in PRICES.items()}, Objective("quality_target", 0.05))
    prompts = ["a proof", "hello"] * 8

    async def main() -> tuple[list, list]:
        batcher = MicroBatcher(router, window_s=0.005)
        try:
            choices = [batcher.choose(chooser, p, 10) for p in prompts]
            rates = [batcher.win_rate(p, ("big", "small")) for p in prompts[:4]]
            out = await asyncio.gather(*choices, *rates)
            assert batcher.batches == 1 and batcher.group_calls == 1
            # one prompt that breaks the batch fails alone; the others are still answered
            mixed = await asyncio.gather(*(batcher.choose(chooser, p, 10)
                                           for p in ["poison", "a proof", "hi"]),
                                         return_exceptions=True)
            return out, mixed
        finally:
            batcher.close()

    out, mixed = asyncio.run(main())
    assert [c.model for c in out[:16]] == ["big", "small"] * 8
    assert out[16:] == pytest.approx([router.win_rate([p], "big", "small")[0]
                                      for p in prompts[:4]])
    # the 16 choices shared one model_scores call (the pair requests another, in the same batch)
    assert router.calls[0] == prompts
    assert isinstance(mixed[0], ValueError) and [c.model for c in mixed[1:]] == ["big", "small"]


def test_server_batches_concurrent_group_requests(server) -> None:  # noqa: ANN001
    import openai

    thread = server[0]
    batcher = thread.app.routing.batchers["scorer"]
    before = batcher.group_calls

    async def main() -> list:
        client = openai.AsyncOpenAI(base_url=thread.url + "/v1", api_key="x", max_retries=0)
        prompts = [f"question {i} proof" if i % 2 else f"question {i}" for i in range(24)]
        return await asyncio.gather(*(client.chat.completions.create(
            model="auto", messages=[{"role": "user", "content": p}]) for p in prompts))

    responses = asyncio.run(main())
    assert [r.model for r in responses] == ["small", "big"] * 12
    # 24 concurrent requests, fewer choose calls: they were batched
    assert batcher.group_calls - before < 24
    assert batcher.largest_batch > 1
