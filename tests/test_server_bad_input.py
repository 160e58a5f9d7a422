"""One bad request never affects another: malformed input gets a 4xx for that request alone."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from switchllm.serving import ConfigError, build_config, create_app, read_records
from switchllm.serving.routing import MicroBatcher
from tests.serving_fixtures import FakeUpstream, KeywordRouter, ServerThread


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, FakeUpstream]]:
    upstream = FakeUpstream().start()
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url,
        overrides={"log_path": str(tmp_path_factory.mktemp("log") / "d.sqlite"), "retries": 0},
    )
    thread = ServerThread(create_app(config)).start()
    yield thread, upstream
    thread.stop()
    upstream.stop()


def post_raw(server: ServerThread, raw: bytes) -> httpx.Response:
    return httpx.post(server.url + "/v1/chat/completions", content=raw, timeout=10,
                      headers={"content-type": "application/json"})


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        # a lone surrogate is a valid JSON escape but not text
        (b'{"model": "router-random-0.5", "messages": [{"role": "user", "content": "hi \\ud800"}]}',
         "messages[0].content contains a lone UTF-16 surrogate"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "user": "\\udc00"}',
         "user contains a lone UTF-16 surrogate"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "x": '
         + b"[" * 1000 + b"]" * 1000 + b"}", "nests deeper than 64 levels"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], '
         b'"temperature": NaN}', "NaN is not a JSON number"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], '
         b'"temperature": -Infinity}', "-Infinity is not a JSON number"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "stream": "false"}',
         "'stream' must be true or false"),
        (b'{"model": "weak", "messages": [{"role": "user", "content": "hi"}], "stream": [null]}',
         "'stream' must be true or false"),
    ],
)
def test_malformed_request_gets_a_400_naming_the_problem(
    server: tuple[ServerThread, FakeUpstream], raw: bytes, says: str
) -> None:
    thread, upstream = server
    upstream.reset()
    response = post_raw(thread, raw)
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
    assert upstream.seen == []  # nothing was sent upstream


def test_surrogate_pairs_are_ordinary_text(server: tuple[ServerThread, FakeUpstream]) -> None:
    thread, upstream = server
    upstream.reset()
    body = json.dumps({"model": "router-random-0.5",
                       "messages": [{"role": "user", "content": "smile \U0001F600"}]})
    assert "\\ud83d\\ude00" in body  # the client escaped the emoji as a surrogate pair
    response = post_raw(thread, body.encode())
    assert response.status_code == 200
    assert upstream.seen[0].body["messages"][0]["content"] == "smile \U0001F600"


class FragileRouter(KeywordRouter):
    """Fails any batch that holds the prompt 'poison', as a tokenizer fails on bad text."""

    def win_rate(self, prompts: Sequence[str], strong: str | None = None,
                 weak: str | None = None) -> np.ndarray:
        if "poison" in prompts:
            raise UnicodeEncodeError("utf-8", "poison", 0, 1, "surrogates not allowed")
        return super().win_rate(prompts, strong, weak)


def test_a_request_that_breaks_the_router_fails_alone() -> None:
    router = FragileRouter(keywords=["proof"])

    async def main() -> list[object]:
        batcher = MicroBatcher(router, window_s=0.005)
        prompts = ["a proof", "poison", "hello"] * 4
        try:
            return await asyncio.gather(*(batcher.win_rate(p, (None, None)) for p in prompts),
                                        return_exceptions=True)
        finally:
            batcher.close()

    results = asyncio.run(main())
    for prompt, result in zip(["a proof", "poison", "hello"] * 4, results, strict=True):
        if prompt == "poison":
            assert isinstance(result, UnicodeEncodeError)
        else:
            assert result == (0.9 if prompt == "a proof" else 0.1)


# ---- malformed upstream answers: the caller gets the other model, or a clean answer -----------
def _chunk(choices: object, usage: object = None) -> bytes:
    event: dict[str, object] = {"id": "c", "object": "chat.completion.chunk", "choices": choices}
    if usage is not None:
        event["usage"] = usage
    return b"data: " + json.dumps(event).encode() + b"\n\n"


HI = {"model": "router-random-0", "messages": [{"role": "user", "content": "hi"}]}


@pytest.mark.parametrize("payload", [
    {"id": "x", "choices": 5},
    {"id": "x", "choices": ["text"]},
    ["not", "an", "object"],
])
def test_malformed_upstream_answer_falls_back(server: tuple[ServerThread, FakeUpstream],
                                              payload: object) -> None:
    thread, upstream = server
    upstream.reset()
    upstream.behaviour("strong").payload = payload  # type: ignore[assignment]
    response = httpx.post(thread.url + "/v1/chat/completions", json=HI, timeout=10)
    assert response.status_code == 200
    assert response.json()["model"] == "weak"
    assert response.headers["x-switchllm-fallback"] == "true"


def test_malformed_stream_event_before_first_token_falls_back(
    server: tuple[ServerThread, FakeUpstream],
) -> None:
    thread, upstream = server
    upstream.reset()
    upstream.behaviour("strong").events = [_chunk(5), b"data: [DONE]\n\n"]
    response = httpx.post(thread.url + "/v1/chat/completions", json={**HI, "stream": True},
                          timeout=10)
    assert response.status_code == 200
    assert '"model":"weak"' in response.text and "error" not in response.text


def test_bad_usage_figures_keep_the_answer(server: tuple[ServerThread, FakeUpstream]) -> None:
    thread, upstream = server
    for usage in ("lots", {"prompt_tokens": -5, "completion_tokens": "many"}):
        upstream.reset()
        upstream.behaviour("strong").payload = {
            "id": "x", "object": "chat.completion", "model": "s", "usage": usage,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                         "finish_reason": "stop"}],
        }
        response = httpx.post(thread.url + "/v1/chat/completions", json=HI, timeout=10)
        assert response.status_code == 200 and response.json()["model"] == "strong"


def test_complete_stream_without_done_ends_cleanly(
    server: tuple[ServerThread, FakeUpstream],
) -> None:
    thread, upstream = server
    upstream.reset()
    upstream.behaviour("strong").events = [
        _chunk([{"index": 0, "delta": {"role": "assistant", "content": "Hel"}}]),
        _chunk([{"index": 0, "delta": {"content": "lo"}, "finish_reason": "stop"}]),
    ]
    response = httpx.post(thread.url + "/v1/chat/completions", json={**HI, "stream": True},
                          timeout=10)
    assert response.status_code == 200
    assert "error" not in response.text
    assert response.text.rstrip().endswith("data: [DONE]")
    assert '"content":"Hel"' in response.text and '"content":"lo"' in response.text


def test_a_departed_client_costs_no_fallback_call_and_is_logged_as_gone(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream().start()
    log_path = tmp_path / "d.sqlite"
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url,
        overrides={"log_path": str(log_path), "retries": 0, "log_flush_ms": 10},
    )
    upstream.behaviour("strong").delay_s = 1.0
    upstream.behaviour("strong").fail_status = 500  # would fall back to weak after a second
    thread = ServerThread(create_app(config)).start()
    try:
        for stream in (False, True):
            with pytest.raises(httpx.TimeoutException):
                httpx.post(thread.url + "/v1/chat/completions", json={**HI, "stream": stream},
                           timeout=0.3)
        time.sleep(1.5)
        assert [s.model for s in upstream.seen] == ["strong", "strong"]  # no fallback calls
    finally:
        thread.stop()
        upstream.stop()
    rows = list(read_records(log_path))
    assert [(r["status"], r["cost_usd"], r["stream"]) for r in rows] == [
        (499, None, 0), (499, None, 1)]


def test_routers_read_at_most_max_prompt_chars_of_a_huge_prompt() -> None:
    from switchllm.serving.routing import MAX_PROMPT_CHARS, AsyncRouting, RouterSet

    router = KeywordRouter(keywords=["proof"])
    routers = RouterSet({})
    routers.routers["keyword"] = router

    async def main() -> list[float]:
        routing = AsyncRouting(routers, "strong", "weak", window_s=0.0)
        try:
            huge = "a proof " + "x" * 4_000_000  # 4 MB: tokenising it all took seconds
            return [(await routing.decide("keyword", 0.5, p)).win_rate
                    for p in (huge, "short proof")]
        finally:
            routing.close()

    assert asyncio.run(main()) == [0.9, 0.9]
    assert [len(batch[0]) for batch in router.batches] == [MAX_PROMPT_CHARS, len("short proof")]


def test_timeout_is_a_deadline_per_attempt_not_per_read() -> None:
    upstream = FakeUpstream().start()
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url, overrides={"log_path": None, "retries": 0, "timeout": 1.0},
    )
    strong = upstream.behaviour("strong")
    strong.drip_s = 0.2  # a whole answer would take ~8 s, each read well within the timeout
    strong.chunk_delay_s = 0.2
    strong.events = [b": keep-alive\n\n"] * 30 + upstream.stream_events(
        {"model": "strong", "stream": True})
    thread = ServerThread(create_app(config)).start()
    try:
        for stream in (False, True):
            started = time.perf_counter()
            response = httpx.post(thread.url + "/v1/chat/completions",
                                  json={**HI, "stream": stream}, timeout=20)
            assert response.status_code == 200
            assert response.headers["x-switchllm-model"] == "weak"  # fell back at the deadline
            assert time.perf_counter() - started < 4.0
    finally:
        thread.stop()
        upstream.stop()


def test_retry_after_is_honoured_for_every_request_and_passed_on() -> None:
    upstream = FakeUpstream().start()
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url, overrides={"log_path": None, "retries": 2},
    )
    for model in ("strong", "weak"):
        upstream.behaviour(model).fail_status = 429
        upstream.behaviour(model).retry_after = "30"
    thread = ServerThread(create_app(config)).start()
    try:
        first = httpx.post(thread.url + "/v1/chat/completions", json=HI, timeout=10)
        assert first.status_code == 429
        assert 29 <= int(first.headers["retry-after"]) <= 30  # the caller learns when to return
        assert [s.model for s in upstream.seen] == ["strong", "weak"]  # no retry after 2 s
        for stream in (False, True):  # later requests do not call the rate-limited models
            later = httpx.post(thread.url + "/v1/chat/completions",
                               json={**HI, "stream": stream}, timeout=10)
            assert later.status_code == 429 and "retry-after" in later.headers
        assert len(upstream.seen) == 2
    finally:
        thread.stop()
        upstream.stop()


def test_a_short_retry_after_is_waited_out_on_the_same_model() -> None:
    upstream = FakeUpstream().start()
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url, overrides={"log_path": None, "retries": 1},
    )
    upstream.behaviour("strong").fail_next = 1
    upstream.behaviour("strong").fail_status_next = 429
    upstream.behaviour("strong").retry_after = "0.3"
    thread = ServerThread(create_app(config)).start()
    try:
        started = time.perf_counter()
        response = httpx.post(thread.url + "/v1/chat/completions", json=HI, timeout=10)
        assert response.status_code == 200 and response.json()["model"] == "strong"
        assert time.perf_counter() - started >= 0.3
    finally:
        thread.stop()
        upstream.stop()


# ---- browser attacks on a keyless local server ---------------------------------------------
def test_a_cross_site_text_plain_post_is_refused(server: tuple[ServerThread, FakeUpstream]) -> None:
    thread, upstream = server
    upstream.reset()
    body = json.dumps(HI).encode()
    for kind in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data"):
        response = httpx.post(thread.url + "/v1/chat/completions", content=body, timeout=10,
                              headers={"content-type": kind, "origin": "https://evil.example"})
        assert response.status_code == 415
        assert "Content-Type: application/json" in response.json()["error"]["message"]
    assert upstream.seen == []  # no upstream credit spent
    ok = httpx.post(thread.url + "/v1/chat/completions", content=body, timeout=10,
                    headers={"content-type": "application/json; charset=utf-8"})
    assert ok.status_code == 200


def test_dns_rebinding_host_is_refused_on_loopback(
    server: tuple[ServerThread, FakeUpstream],
) -> None:
    thread, upstream = server
    upstream.reset()
    for path in ("/v1/chat/completions", "/metrics", "/v1/models"):
        response = httpx.request("POST" if "chat" in path else "GET", thread.url + path,
                                 json=HI, headers={"host": "attacker.example"}, timeout=10)
        assert response.status_code == 403
        assert "attacker.example" in response.json()["error"]["message"]
    assert upstream.seen == []
    for host in ("localhost", f"127.0.0.1:{thread.port}", f"localhost:{thread.port}"):
        assert httpx.get(thread.url + "/health", headers={"host": host}).status_code == 200


def test_allowed_hosts_setting(tmp_path: Path) -> None:
    def names(**overrides: object) -> set[str] | None:
        config = build_config(routers={"random": "random"}, strong_model="s", weak_model="w",
                              overrides={"log_path": None, **overrides})
        return config.served_host_names()

    assert names() == {"127.0.0.1", "localhost", "::1"}
    assert names(host="0.0.0.0") is None  # beyond loopback: any name unless configured
    assert names(host="0.0.0.0", allowed_hosts=["Router.Example.com"]) == {"router.example.com"}
    assert names(allowed_hosts=["*"]) is None
    (tmp_path / "c.yaml").write_text("routers: [random]\nstrong_model: s\nweak_model: w\n"
                                     "server: {allowed_hosts: router.example.com}\n")
    with pytest.raises(ConfigError, match="allowed_hosts must be a list"):
        build_config(config_path=tmp_path / "c.yaml")


def test_every_endpoint_answers_its_own_method_only(
    server: tuple[ServerThread, FakeUpstream],
) -> None:
    thread, _ = server
    for method, path in (("DELETE", "/metrics"), ("POST", "/health"), ("PUT", "/v1/models"),
                         ("POST", "/v1/models/weak"), ("GET", "/v1/chat/completions"),
                         ("GET", "/v1/feedback"), ("GET", "/v1/embeddings")):
        response = httpx.request(method, thread.url + path, timeout=10)
        assert response.status_code == 405, (method, path)
        assert response.json()["error"]["code"] == "method_not_allowed"
