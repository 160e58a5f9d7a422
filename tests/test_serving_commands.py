"""`switchllm calibrate` and `switchllm stats`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from switchllm import routers as router_registry
from switchllm.cli import main
from switchllm.serving.decision_log import DecisionLog, DecisionRecord
from tests.serving_fixtures import KeywordRouter


@pytest.fixture
def card(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setitem(router_registry.ROUTER_KINDS, "keyword",
                        "tests.serving_fixtures:KeywordRouter")
    router = KeywordRouter(keywords=["proof"])
    router.calibrate(["proof"] * 3 + ["hi"] * 7)
    return router.save(tmp_path / "card")


def record(prompt: str | None, model: str, status: int = 200, fallback: bool = False):
    return DecisionRecord(
        ts=1.0, router="keyword", threshold=0.5, win_rate=0.9 if model == "big" else 0.1,
        model=model, routed_model=model, strong_model="big", fallback=fallback, status=status,
        stream=False, latency_ms=10.0, routing_ms=0.1, prompt_tokens=1000, completion_tokens=100,
        cost_usd=0.02 if model == "big" else 0.001, strong_cost_usd=0.02, prompt=prompt,
    )


def write_log(path: Path, prompts: bool) -> None:
    log = DecisionLog(path, log_prompts=prompts)
    log.record(record("a proof please", "big"))
    for text in ("hello", "hi there", "weather"):
        log.record(record(text, "small"))
    log.record(record("boom", "small", status=502))
    log.close()


def test_calibrate_from_prompts_file_is_routellm_quantile(card: Path, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture) -> None:
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text("\n".join([
        json.dumps({"prompt": "a proof"}), json.dumps({"prompt": "hi"}),
        json.dumps({"messages": [{"role": "user", "content": "hello"}]}),
        json.dumps({"prompt": "bye"})]) + "\n")
    assert main(["calibrate", "--router", str(card), "--strong-pct", "0.1",
                 "--prompts", str(jsonl)]) == 0
    # win rates [0.9, 0.1, 0.1, 0.1]; the 0.9 quantile interpolates to 0.66
    assert "threshold = 0.66000" in capsys.readouterr().out
    text = tmp_path / "prompts.txt"
    text.write_text("a proof\nhi\n\nhello\nbye\n")
    assert main(["calibrate", "--router", str(card), "--strong-pct", "0.1",
                 "--prompts", str(text)]) == 0
    assert "threshold = 0.66000" in capsys.readouterr().out


def test_calibrate_from_card_quantiles(card: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["calibrate", "--router", str(card), "--strong-model-pct", "0.3"]) == 0
    out = capsys.readouterr().out
    from switchllm.routers import load_router

    assert f"threshold = {load_router(card).threshold_for_strong_share(0.3):.5f}" in out
    assert "calibration quantiles" in out


def test_calibrate_from_log(card: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with_prompts, without = tmp_path / "on.sqlite", tmp_path / "off.sqlite"
    write_log(with_prompts, prompts=True)
    write_log(without, prompts=False)
    assert main(["calibrate", "--router", str(card), "--strong-pct", "0.5", "--from-log",
                 "--log", str(with_prompts)]) == 0
    assert "5 prompts from the decision log" in capsys.readouterr().out
    assert main(["calibrate", "--router", str(card), "--strong-pct", "0.5", "--from-log",
                 "--log", str(without)]) == 2
    assert "prompt logging was off" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("content", "needle"),
    [('{"prompt": "ok"}\n{"text": 1}\n', ":2: needs a 'prompt'"), ('{"prompt": \n', ":1: not")],
)
def test_calibrate_bad_prompts_file(card: Path, tmp_path: Path, capsys: pytest.CaptureFixture,
                                    content: str, needle: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    assert main(["calibrate", "--router", str(card), "--strong-pct", "0.5",
                 "--prompts", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_stats_summarises_strong_share_and_saving(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture) -> None:
    path = tmp_path / "log.sqlite"
    write_log(path, prompts=False)
    assert main(["stats", "--log", str(path)]) == 0
    out = capsys.readouterr().out
    line = next(row for row in out.splitlines() if row.startswith("keyword"))
    # 5 requests, 1 error; 1 of 4 answered by the strong model; cost 0.023 vs 0.08 always-strong
    assert line.split()[1:4] == ["5", "1", "0"]
    assert "25.0%" in line and "0.0230" in line and "0.0800" in line and "71.2%" in line
    assert main(["stats", "--log", str(tmp_path / "missing.sqlite")]) == 2


def test_serve_command_end_to_end(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    import httpx

    from tests.serving_fixtures import FakeUpstream, free_port

    upstream = FakeUpstream().start()
    port = free_port()
    env = {**os.environ, "SWITCHLLM_API_KEYS": "k1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "switchllm", "serve", "--routers", "random", "--strong-model",
         "strong", "--weak-model", "weak", "--base-url", upstream.base_url, "--port", str(port),
         "--log", str(tmp_path / "log.sqlite")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        body = {"model": "router-random-0", "messages": [{"role": "user", "content": "hi"}]}
        response = httpx.post(url + "/v1/chat/completions", json=body,
                              headers={"authorization": "Bearer k1"})
        assert response.status_code == 200 and response.json()["model"] == "strong"
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 401
    finally:
        process.terminate()
        out, err = process.communicate(timeout=10)
        upstream.stop()
    assert f"http://127.0.0.1:{port}/v1" in out
    from switchllm.serving.decision_log import read_records

    rows = list(read_records(tmp_path / "log.sqlite"))  # flushed at shutdown
    # the unauthenticated call is counted as a rejection (issue 10: 4xx outcomes in stats)
    assert sorted((r["router"], r["model"] or "", r["status"]) for r in rows) == [
        ("(rejected)", "", 401), ("random", "strong", 200)]
