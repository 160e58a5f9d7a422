"""Feedback end to end: the request id on every chat response, POST /v1/feedback through the
running server (auth, validation), the `feedback` table, and `train --from-log`."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchllm.cli import main
from switchllm.routers import load_router
from switchllm.serving.config import build_config
from switchllm.serving.decision_log import read_feedback, read_records
from switchllm.serving.server import create_app
from tests.serving_fixtures import FakeUpstream, ServerThread

KEY = "client-secret"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


def _server(upstream: FakeUpstream, log_path: Path, log_prompts: bool) -> ServerThread:
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url,
        overrides={"log_path": str(log_path), "log_prompts": log_prompts, "timeout": 2.0,
                   "retries": 0, "api_keys": [KEY]},
    )
    return ServerThread(create_app(config)).start()


@pytest.fixture(scope="module")
def served(upstream: FakeUpstream, tmp_path_factory: pytest.TempPathFactory):
    log_path = tmp_path_factory.mktemp("log") / "decisions.sqlite"
    thread = _server(upstream, log_path, log_prompts=True)
    yield thread, log_path
    thread.stop()


def chat(url: str, prompt: str, model: str, stream: bool = False,
         key: str = KEY) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}], "stream": stream}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10,
                      headers={"Authorization": f"Bearer {key}"})


def feedback(url: str, body: object, key: str = KEY) -> httpx.Response:
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    headers = {"content-type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    return httpx.post(url + "/v1/feedback", content=content, timeout=10, headers=headers)


def _wait_for(predicate, timeout: float = 5.0) -> None:  # noqa: ANN001 - the log is batched
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the decision log was not written in time")
        time.sleep(0.05)


def test_feedback_end_to_end_trains_a_card(served, tmp_path: Path, capsys) -> None:
    thread, log_path = served
    # 40 arithmetic prompts answered by the weak model and rated bad; 40 chit-chat prompts
    # answered by the weak model and rated good; a few preferences and winners on top.
    ids = {}
    for i in range(40):
        for prompt in (f"compute {i} * 37 + {i}", f"say hello to friend number {i}"):
            response = chat(thread.url, prompt, "router-random-1", stream=(i % 4 == 0))
            assert response.status_code == 200
            request_id = response.headers["x-switchllm-request-id"]
            assert len(request_id) == 32 and request_id not in ids.values()
            ids[prompt] = request_id
            assert response.headers["x-switchllm-model"] == "weak"
    for prompt, request_id in ids.items():
        answer = feedback(thread.url, {"request_id": request_id,
                                       "rating": 0 if prompt.startswith("compute") else 1})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"object": "feedback", "request_id": request_id,
                                 "stored": True}
    strong_answer = chat(thread.url, "compute 1 + 1 please", "router-random-0")
    strong_id = strong_answer.headers["x-switchllm-request-id"]
    assert feedback(thread.url, {"request_id": strong_id, "preferred_model": "strong"}
                    ).status_code == 200
    assert feedback(thread.url, {"request_id": ids["compute 3 * 37 + 3"],
                                 "winner": "strong"}).status_code == 200
    _wait_for(lambda: len(read_feedback(log_path)) == 82)
    records = {r["request_id"]: r for r in read_records(log_path)}
    assert set(ids.values()) <= set(records)
    assert records[strong_id]["model"] == "strong"
    rows = read_feedback(log_path)
    assert {r["prompt"] for r in rows} >= set(ids)
    preferred = next(r for r in rows if r["preferred_model"])
    assert (preferred["model"], preferred["other_model"]) == ("strong", "weak")

    card = tmp_path / "card"
    code = main(["train", "knn", "--from-log", str(log_path), "--output", str(card),
                 "--val-fraction", "0", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "82 feedback rows -> 82 battles" in out
    router = load_router(card)
    assert router.default_pair == ("strong", "weak")
    rates = router.win_rate(["compute 5 * 37 + 5", "say hello to friend number 5"],
                            "strong", "weak")
    assert rates[0] > 0.5 > rates[1]  # learned: arithmetic needs the strong model
    info = json.loads((card / "router.json").read_text())
    assert info["training"]["data_files"][0]["format"] == "feedback"


def test_feedback_needs_the_client_key(served) -> None:
    thread, _ = served
    request_id = chat(thread.url, "hello", "router-random-1").headers["x-switchllm-request-id"]
    for key in ("wrong", ""):
        answer = feedback(thread.url, {"request_id": request_id, "rating": 1}, key=key)
        assert answer.status_code == 401
        assert answer.json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(thread.url + "/v1/feedback",
                     headers={"Authorization": f"Bearer {KEY}"}).status_code == 405


@pytest.mark.parametrize("body, status, param", [
    (b"not json", 400, None),
    ([1, 2], 400, None),
    ({"rating": 1}, 400, "request_id"),
    ({"request_id": "{id}"}, 400, None),
    ({"request_id": "{id}", "rating": 1, "winner": "weak"}, 400, "winner"),
    ({"request_id": "{id}", "rating": 7}, 400, "rating"),
    ({"request_id": "{id}", "rating": True}, 400, "rating"),
    ({"request_id": "{id}", "winner": "model_a"}, 400, "winner"),
    ({"request_id": "{id}", "preferred_model": "gpt-9"}, 400, "preferred_model"),
    ({"request_id": "{id}", "rating": 1, "comment": "x"}, 400, "comment"),
    ({"request_id": "0" * 32, "rating": 1}, 404, "request_id"),
])
def test_bad_feedback_gets_openai_style_4xx(served, body, status, param) -> None:
    thread, log_path = served
    request_id = chat(thread.url, "hello", "router-random-1").headers["x-switchllm-request-id"]
    if isinstance(body, dict):
        body = {k: (request_id if v == "{id}" else v) for k, v in body.items()}
    before = len(read_feedback(log_path))
    answer = feedback(thread.url, body)
    assert answer.status_code == status, answer.text
    error = answer.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    assert error["param"] == param
    time.sleep(0.3)
    assert len(read_feedback(log_path)) == before  # nothing stored


def test_train_from_log_without_prompts_says_how_to_fix(upstream: FakeUpstream,
                                                        tmp_path: Path, capsys) -> None:
    log_path = tmp_path / "no-prompts.sqlite"
    thread = _server(upstream, log_path, log_prompts=False)
    try:
        request_id = chat(thread.url, "hello", "router-random-1").headers[
            "x-switchllm-request-id"]
        assert feedback(thread.url, {"request_id": request_id, "rating": 0}).status_code == 200
    finally:
        thread.stop()
    code = main(["train", "knn", "--from-log", str(log_path), "--output", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and "--log-prompts" in err and "Traceback" not in err


