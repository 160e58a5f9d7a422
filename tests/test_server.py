"""End-to-end tests of `switchllm serve`'s app: a real loopback upstream, the real server under
uvicorn on a random port, driven by the official openai client and raw HTTP."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from switchllm import routers as router_registry
from switchllm.routers import load_router
from switchllm.serving.config import build_config
from switchllm.serving.decision_log import read_records
from switchllm.serving.server import create_app
from tests.serving_fixtures import FakeUpstream, KeywordRouter, ServerThread, free_port

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "array", "items": {"type": "integer", "minimum": 1}},
            },
            "required": ["city"],
            "additionalProperties": False,
        },
        "strict": True,
    },
}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def keyword_card(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(router_registry.ROUTER_KINDS, "keyword", "tests.serving_fixtures:KeywordRouter")
        router = KeywordRouter(keywords=["proof", "theorem"])
        router.calibrate(["prove the theorem", "hi", "hello", "a proof", "weather", "x"])
        card = router.save(tmp_path_factory.mktemp("card") / "keyword")
        yield card


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream, keyword_card: Path, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("log") / "decisions.sqlite"
    config = build_config(
        routers={"random": "random", "keyword": str(keyword_card)},
        strong_model="strong", weak_model="weak", base_url=upstream.base_url,
        overrides={"log_path": str(log_path), "log_prompts": True, "timeout": 0.5,
                   "retries": 1, "backoff": 0.001, "max_body_bytes": 200_000,
                   "batch_window_ms": 2.0},
    )
    config.models["strong"].input_price, config.models["strong"].output_price = 10.0, 30.0
    config.models["weak"].input_price, config.models["weak"].output_price = 0.5, 1.0
    thread = ServerThread(create_app(config)).start()
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def _reset(upstream: FakeUpstream) -> None:
    upstream.reset()
    upstream.streams_cut = 0


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)


def post(server: ServerThread, body: object, raw: bytes | None = None, **kw) -> httpx.Response:
    content = raw if raw is not None else json.dumps(body).encode()
    kw["headers"] = {"content-type": "application/json", **kw.get("headers", {})}
    return httpx.post(server.url + "/v1/chat/completions", content=content, timeout=10, **kw)


HELLO = [{"role": "user", "content": "hello"}]


# ---- happy paths ------------------------------------------------------------------------------
def test_threshold_decides_and_model_field_names_the_model(client: openai.OpenAI,
                                                           upstream: FakeUpstream) -> None:
    always_strong = client.chat.completions.create(model="router-random-0", messages=HELLO)
    always_weak = client.chat.completions.create(model="router-random-1", messages=HELLO)
    assert isinstance(always_strong, openai.types.chat.ChatCompletion)
    assert always_strong.model == "strong" and always_weak.model == "weak"
    assert [s.model for s in upstream.seen] == ["strong", "weak"]
    assert always_strong.choices[0].message.content == "Hello from the upstream"


def test_learned_router_routes_on_text_parts_and_reports_win_rate(
    client: openai.OpenAI, upstream: FakeUpstream
) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": [
            {"type": "text", "text": "Give a proof of this theorem"},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        ]},
    ]
    raw = client.chat.completions.with_raw_response.create(
        model="router-keyword-0.5", messages=messages
    )
    response = raw.parse()
    assert response.model == "strong"
    assert raw.headers["x-switchllm-model"] == "strong"
    assert float(raw.headers["x-switchllm-win-rate"]) == pytest.approx(0.9)
    assert raw.headers["x-switchllm-router"] == "keyword"
    # the image part reached the upstream untouched
    assert upstream.seen[0].body["messages"] == messages
    easy = client.chat.completions.create(model="router-keyword-0.5", messages=HELLO)
    assert easy.model == "weak"


def test_strong_share_maps_through_card_quantiles(client: openai.OpenAI,
                                                  keyword_card: Path) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="router-keyword-s0.3", messages=HELLO
    )
    expected = load_router(keyword_card).threshold_for_strong_share(0.3)
    assert float(raw.headers["x-switchllm-threshold"]) == pytest.approx(expected, abs=1e-5)


def test_every_openai_parameter_passes_through_untouched(client: openai.OpenAI,
                                                         upstream: FakeUpstream) -> None:
    params = dict(
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        response_format={"type": "json_schema", "json_schema": {
            "name": "answer", "strict": True,
            "schema": {"type": "object", "properties": {"a": {"type": "string"}},
                       "required": ["a"], "additionalProperties": False}}},
        n=2, seed=7, stop=["\n\n", "END"], logprobs=True, top_logprobs=2, temperature=0.3,
        max_completion_tokens=50, user="u-1", parallel_tool_calls=False,
    )
    response = client.chat.completions.create(model="router-random-0", messages=HELLO, **params)
    sent = upstream.seen[0].body
    assert sent.pop("model") == "strong"
    assert sent == {"messages": HELLO, **params}
    assert len(response.choices) == 2
    call = response.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}


def test_streaming_every_chunk_names_the_model(client: openai.OpenAI,
                                               upstream: FakeUpstream) -> None:
    stream = client.chat.completions.create(
        model="router-random-1", messages=HELLO, stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks and all(c.model == "weak" for c in chunks)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Hello from the upstream"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    assert upstream.seen[0].body["stream_options"] == {"include_usage": True}


def test_async_client_concurrent_requests_are_micro_batched(
    server: ServerThread, upstream: FakeUpstream
) -> None:
    async def main() -> list:
        client = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)
        prompts = [f"question {i} proof" if i % 2 else f"question {i}" for i in range(24)]
        calls = [client.chat.completions.create(
            model="router-keyword-0.5", messages=[{"role": "user", "content": p}])
            for p in prompts]
        stream = await client.chat.completions.create(
            model="router-keyword-0.5", messages=HELLO, stream=True)
        chunks = [c async for c in stream]
        return [*await asyncio.gather(*calls), chunks]

    *responses, chunks = asyncio.run(main())
    assert [r.model for r in responses] == ["weak", "strong"] * 12
    assert all(c.model == "weak" for c in chunks)
    app = server.app
    batcher = app.routing.batchers["keyword"]
    assert batcher.largest_batch > 1  # concurrent requests shared one win_rate call


def test_models_health_and_metrics(server: ServerThread, client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "router-random-s0.5" in ids and "router-keyword-s0.5" in ids
    assert "strong" in ids and "weak" in ids
    assert httpx.get(server.url + "/health").json()["status"] == "online"
    client.chat.completions.create(model="router-random-1", messages=HELLO)
    metrics = httpx.get(server.url + "/metrics").text
    assert 'switchllm_requests_total{model="weak",router="random",status="200"}' in metrics
    assert "switchllm_routing_seconds_bucket" in metrics
    assert "switchllm_upstream_seconds_bucket" in metrics
    assert 'switchllm_tokens_total{kind="prompt",model="weak"}' in metrics
    saving = [line for line in metrics.splitlines() if line.startswith("switchllm_saving_dollars")]
    assert saving and float(saving[0].split()[-1]) > 0  # weak is cheaper than strong


def test_direct_upstream_model_is_served_without_routing(client: openai.OpenAI) -> None:
    response = client.chat.completions.create(model="weak", messages=HELLO)
    assert response.model == "weak"


# ---- bad input ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "raw", "status", "needle"),
    [
        (None, b"{not json", 400, "not valid JSON"),
        (None, b"", 400, "empty"),
        (None, b"[1, 2]", 400, "JSON object"),
        ({"model": "router-random-0.5"}, None, 400, "'messages' is required"),
        ({"model": "router-random-0.5", "messages": []}, None, 400, "non-empty"),
        ({"model": "router-random-0.5", "messages": ["hi"]}, None, 400, "messages[0]"),
        ({"messages": HELLO}, None, 400, "'model' is required"),
        ({"model": "router-nope-0.5", "messages": HELLO}, None, 404, "unknown router 'nope'"),
        ({"model": "router-random-1.5", "messages": HELLO}, None, 400, "[0, 1]"),
        ({"model": "router-random--0.1", "messages": HELLO}, None, 400, "[0, 1]"),
        ({"model": "router-random-abc", "messages": HELLO}, None, 400, "not a number"),
        ({"model": "router-random-s2", "messages": HELLO}, None, 400, "[0, 1]"),
        ({"model": "gpt-9", "messages": HELLO}, None, 404, "'gpt-9' is not served"),
    ],
)
def test_bad_requests_get_openai_style_4xx(server: ServerThread, body, raw, status, needle) -> None:
    response = post(server, body, raw)
    assert response.status_code == status
    error = response.json()["error"]
    assert needle in error["message"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in response.text


def test_size_limit_method_and_path(server: ServerThread) -> None:
    big = {"model": "router-random-0.5", "messages": [{"role": "user", "content": "x" * 300_000}]}
    response = post(server, big)
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]
    assert httpx.get(server.url + "/v1/chat/completions").status_code == 405
    assert httpx.get(server.url + "/v2/nothing").status_code == 404


# ---- upstream failures ------------------------------------------------------------------------
def test_upstream_500_falls_back_to_the_other_model(server: ServerThread,
                                                    upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").fail_status = 500
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 200
    assert response.json()["model"] == "weak"
    assert response.headers["x-switchllm-fallback"] == "true"
    assert response.headers["x-switchllm-routed-model"] == "strong"
    assert [s.model for s in upstream.seen] == ["strong", "strong", "weak"]  # 1 retry, then weak


def test_transient_500_is_retried_on_the_same_model(server: ServerThread,
                                                    upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").fail_next = 1
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 200 and response.json()["model"] == "strong"
    assert response.headers["x-switchllm-fallback"] == "false"


def test_closed_keep_alive_connections_are_replaced(server: ServerThread,
                                                    upstream: FakeUpstream) -> None:
    body = {"model": "router-random-0", "messages": HELLO}
    assert post(server, body).status_code == 200
    upstream.close_connections()
    time.sleep(0.05)
    for _ in range(3):
        response = post(server, body)
        assert response.status_code == 200 and response.json()["model"] == "strong"
    assert response.headers["x-switchllm-fallback"] == "false"


def test_upstream_timeout_falls_back(server: ServerThread, upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").delay_s = 2.0  # the server's timeout is 0.5 s
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 200 and response.json()["model"] == "weak"


def test_stream_dropped_before_first_token_falls_back(client: openai.OpenAI,
                                                      upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").drop_stream_after = 1  # only the role chunk, then gone
    chunks = list(client.chat.completions.create(model="router-random-0", messages=HELLO,
                                                 stream=True))
    assert all(c.model == "weak" for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello from the upstream"


def test_stream_dropped_after_tokens_ends_with_an_error(client: openai.OpenAI,
                                                        upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").drop_stream_after = 3
    stream = client.chat.completions.create(model="router-random-0", messages=HELLO, stream=True)
    seen = []
    with pytest.raises(openai.APIError, match="dropped the stream|without \\[DONE\\]"):
        for chunk in stream:
            seen.append(chunk)
    assert seen and all(c.model == "strong" for c in seen)


def test_client_hanging_up_mid_stream_cancels_the_upstream(server: ServerThread,
                                                           upstream: FakeUpstream) -> None:
    upstream.behaviour("weak").reply = " ".join(["word"] * 40)
    upstream.behaviour("weak").chunk_delay_s = 0.02  # about a second for the whole answer
    body = {"model": "router-random-1", "messages": HELLO, "stream": True}
    with httpx.stream("POST", server.url + "/v1/chat/completions", json=body) as response:
        first = next(response.iter_bytes())
        assert b'"model":"weak"' in first
    deadline = time.time() + 2
    while upstream.streams_cut == 0 and time.time() < deadline:
        time.sleep(0.02)
    assert upstream.streams_cut == 1


def test_both_upstreams_down_gives_openai_error(server: ServerThread,
                                                upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").drop_connection = True
    upstream.behaviour("weak").drop_connection = True
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "upstream_unreachable"
    streamed = post(server, {"model": "router-random-0", "messages": HELLO, "stream": True})
    assert streamed.status_code == 502 and "error" in streamed.json()


def test_rate_limited_everywhere_gives_429(server: ServerThread, upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").fail_status = 429
    upstream.behaviour("weak").fail_status = 429
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 429
    assert response.json()["error"]["type"] == "rate_limit_error"


def test_upstream_400_is_the_callers_problem_and_not_retried(server: ServerThread,
                                                             upstream: FakeUpstream) -> None:
    upstream.behaviour("strong").fail_status = 400
    response = post(server, {"model": "router-random-0", "messages": HELLO})
    assert response.status_code == 400
    assert "fake failure 400" in response.json()["error"]["message"]
    assert len(upstream.seen) == 1


# ---- security ---------------------------------------------------------------------------------
def test_client_api_keys_and_upstream_key_never_leaks(upstream: FakeUpstream,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      tmp_path: Path) -> None:
    secret = "sk-upstream-very-secret-123"
    monkeypatch.setenv("TEST_UPSTREAM_KEY", secret)
    config_file = tmp_path / "serve.yaml"
    config_file.write_text(
        "routers: [random]\nstrong_model: strong\nweak_model: weak\nmodels:\n"
        f"  strong: {{base_url: '{upstream.base_url}', api_key_env: TEST_UPSTREAM_KEY}}\n"
        f"  weak: {{base_url: 'http://127.0.0.1:{free_port()}/v1', "
        "api_key_env: TEST_UPSTREAM_KEY}\n"
        "server: {retries: 0}\nlog: {path: null}\n"
    )
    config = build_config(config_path=config_file, overrides={"api_keys": ["client-key"]})
    thread = ServerThread(create_app(config)).start()
    try:
        body = {"model": "router-random-0", "messages": HELLO}
        assert post(thread, body).status_code == 401
        wrong = post(thread, body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert httpx.get(thread.url + "/health").status_code == 200
        assert httpx.get(thread.url + "/metrics").status_code == 401
        good = post(thread, body, headers={"authorization": "Bearer client-key"})
        assert good.status_code == 200
        assert upstream.seen[-1].headers["authorization"] == f"Bearer {secret}"
        # the upstream echoes the key in its error; the weak model is unreachable
        upstream.behaviour("strong").fail_status = 401
        upstream.behaviour("strong").echo_auth = True
        failed = post(thread, body, headers={"authorization": "Bearer client-key"})
        assert failed.status_code == 502
        assert secret not in failed.text
        upstream.behaviour("strong").fail_status = 422
        rejected = post(thread, body, headers={"authorization": "Bearer client-key"})
        assert rejected.status_code == 422
        assert "fake failure 422" in rejected.text and secret not in rejected.text
    finally:
        thread.stop()


# ---- decision log -----------------------------------------------------------------------------
def test_decision_log_records_every_request(server: ServerThread, client: openai.OpenAI) -> None:
    client.chat.completions.create(model="router-keyword-0.5", messages=[
        {"role": "user", "content": "logged proof question"}])
    app = server.app
    log = app.log
    end = time.time() + 3
    rows: list[dict] = []
    while time.time() < end:
        rows = [r for r in read_records(log.path) if r["prompt"] == "logged proof question"]
        if rows:
            break
        time.sleep(0.05)
    assert rows, "the request was not logged"
    row = rows[0]
    assert row["router"] == "keyword" and row["model"] == "strong" and row["status"] == 200
    assert row["win_rate"] == pytest.approx(0.9) and row["threshold"] == pytest.approx(0.5)
    assert row["prompt_tokens"] == 10 and row["completion_tokens"] == 5
    assert row["cost_usd"] == pytest.approx((10 * 10 + 5 * 30) / 1e6)


def test_micro_batcher_makes_one_router_call_for_concurrent_requests() -> None:
    from switchllm.serving.routing import MicroBatcher

    router = KeywordRouter(keywords=["proof"])

    async def main() -> list[float]:
        batcher = MicroBatcher(router, window_s=0.005)
        prompts = ["a proof", "hello"] * 8
        try:
            return await asyncio.gather(*(batcher.win_rate(p, (None, None)) for p in prompts))
        finally:
            batcher.close()

    rates = asyncio.run(main())
    assert rates == [0.9, 0.1] * 8
    assert router.batches == [["a proof", "hello"] * 8]
