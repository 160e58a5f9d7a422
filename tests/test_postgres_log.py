"""The Postgres decision log against a real Postgres (tests/postgres_fixture.py): rows and
feedback land from a running server, replicas share one log, an older table is migrated, the
server keeps serving through a database outage and catches up, SIGTERM loses nothing, and the
offline commands (stats, calibrate, train, label) read the log by URL."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchllm.cli import main
from switchllm.errors import SwitchLLMError
from switchllm.serving.config import build_config
from switchllm.serving.decision_log import (
    COLUMNS,
    DecisionLog,
    DecisionRecord,
    read_decisions,
    read_feedback,
    read_records,
)
from switchllm.serving.log_schema import DECISION_TABLE
from switchllm.serving.server import create_app
from tests.postgres_fixture import TempPostgres, fresh_database, postgres  # noqa: F401
from tests.serving_fixtures import FakeUpstream, ServerThread, free_port


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


def _server(upstream: FakeUpstream, url: str, **overrides: object) -> ServerThread:
    config = build_config(
        routers={"random": "random"}, strong_model="strong", weak_model="weak",
        base_url=upstream.base_url,
        overrides={"log_url": url, "log_prompts": True, "timeout": 2.0, "retries": 0,
                   "log_flush_ms": 50, **overrides},
    )
    return ServerThread(create_app(config)).start()


def _chat(url: str, prompt: str, model: str = "router-random-1") -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
    return httpx.post(url + "/v1/chat/completions", json=body, timeout=10)


def _wait_for(predicate, timeout: float = 10.0) -> None:  # noqa: ANN001 - the log is batched
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("the decision log was not written in time")
        time.sleep(0.05)


def _record(ts: float, request_id: str | None = None) -> DecisionRecord:
    return DecisionRecord(ts=ts, router="random", threshold=0.5, win_rate=0.4, model="weak",
                          routed_model="weak", strong_model="strong", fallback=False, status=200,
                          stream=False, latency_ms=1.0, routing_ms=0.1, prompt_tokens=3,
                          completion_tokens=2, cost_usd=None, strong_cost_usd=None,
                          request_id=request_id)


def test_replicas_share_one_log_of_decisions_and_feedback(
    postgres: TempPostgres, upstream: FakeUpstream, tmp_path: Path,  # noqa: F811
    capsys: pytest.CaptureFixture,
) -> None:
    url = fresh_database(postgres)
    first, second = _server(upstream, url), _server(upstream, url)
    try:
        ids, other = {}, {}
        for i in range(12):
            for prompt in (f"compute {i} * 37 + {i}", f"say hello to friend number {i}"):
                answering, other[prompt] = (first, second) if i % 2 else (second, first)
                response = _chat(answering.url, prompt)
                assert response.status_code == 200
                ids[prompt] = response.headers["x-switchllm-request-id"]
        # a NUL is valid JSON text but not valid Postgres TEXT: the row still lands
        assert _chat(first.url, "nul \u0000 inside").status_code == 200
        _wait_for(lambda: len(list(read_records(url))) == 25)
        # feedback to the replica that did not answer: it finds the request in the shared log
        for prompt, request_id in ids.items():
            answer = httpx.post(other[prompt].url + "/v1/feedback", timeout=10, json={
                "request_id": request_id, "rating": 0 if prompt.startswith("compute") else 1})
            assert answer.status_code == 200, answer.text
        _wait_for(lambda: len(read_feedback(url)) == 24)
        # either replica's /v1/stats (the dashboard's data) summarises the shared log
        stats = httpx.get(second.url + "/v1/stats", timeout=10)
        assert stats.status_code == 200, stats.text
        assert stats.json()["totals"]["requests"] == 25
    finally:
        first.stop()
        second.stop()

    rows = {r["request_id"]: r for r in read_records(url)}
    assert set(ids.values()) <= set(rows)
    row = rows[ids["compute 3 * 37 + 3"]]
    assert (row["router"], row["model"], row["strong_model"], row["status"]) == (
        "random", "weak", "strong", 200)
    assert row["fallback"] == 0 and row["prompt"] == "compute 3 * 37 + 3"
    assert any(r["prompt"] == "nul \ufffd inside" for r in rows.values())
    assert {r["prompt"] for r in read_feedback(url)} == set(ids)
    latest = read_decisions(url, limit=3, newest_first=True, columns=["ts", "model"])
    assert len(latest) == 3 and latest[0]["ts"] >= latest[1]["ts"] >= latest[2]["ts"]
    assert set(latest[0]) == {"ts", "model"}

    # the offline commands read the log by URL
    assert main(["stats", "--log", url]) == 0
    out = capsys.readouterr().out
    assert "random" in out and " 25 " in out
    assert main(["calibrate", "--routers", "random", "--strong-pct", "0.5", "--from-log",
                 "--log", url]) == 0
    assert "25 prompts from the decision log postgresql://" in capsys.readouterr().out
    from switchllm.labelling.prompts import logged_prompt_items

    assert len(logged_prompt_items(url)) == 25
    card = tmp_path / "card"
    assert main(["train", "knn", "--from-log", url, "--output", str(card), "--val-fraction",
                 "0", "--quiet"]) == 0
    assert "24 feedback rows -> 24 battles" in capsys.readouterr().out


def test_an_older_table_is_read_then_migrated(postgres: TempPostgres) -> None:  # noqa: F811
    url = fresh_database(postgres)
    old = [f"{name} {decl.replace('REAL', 'DOUBLE PRECISION')}" for name, decl in
           DECISION_TABLE[:17]]
    import psycopg

    with psycopg.connect(url, autocommit=True) as connection:
        connection.execute(f"CREATE TABLE decisions ({', '.join(old)})")
        connection.execute("INSERT INTO decisions (ts, status, strong_model) VALUES (1, 200, 's')")
    row = next(iter(read_records(url)))  # readable before migration: newer columns are None
    assert row["request_id"] is None and row["best_cost_usd"] is None and row["status"] == 200
    log = DecisionLog(url, flush_s=0.05)
    log.record(_record(2.0, "new"))
    log.close()
    with psycopg.connect(url) as connection:
        columns = [r[0] for r in connection.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = "
            "'decisions' ORDER BY ordinal_position")]
        indexes = {r[0] for r in connection.execute(
            "SELECT indexname FROM pg_indexes WHERE tablename = 'decisions'")}
    assert columns == COLUMNS
    assert "decisions_request_id" in indexes
    assert [(r["ts"], r["request_id"]) for r in read_records(url)] == [(1.0, None), (2.0, "new")]


def test_outage_serves_every_request_then_every_row_arrives(
    postgres: TempPostgres, upstream: FakeUpstream, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    url = fresh_database(postgres)
    server = _server(upstream, url)
    sent: list[str] = []
    failures: list[str] = []
    stop = threading.Event()

    def load() -> None:
        with httpx.Client(timeout=10) as client:
            while not stop.is_set():
                body = {"model": "router-random-0.5",
                        "messages": [{"role": "user", "content": f"q{len(sent)}"}]}
                try:
                    response = client.post(server.url + "/v1/chat/completions", json=body)
                except httpx.HTTPError as exc:
                    failures.append(repr(exc))
                    continue
                if response.status_code != 200:
                    failures.append(response.text)
                else:
                    sent.append(response.headers["x-switchllm-request-id"])
                time.sleep(0.005)

    caplog.set_level(logging.WARNING, logger="switchllm.serving.decision_log")
    worker = threading.Thread(target=load)
    worker.start()
    try:
        time.sleep(0.5)
        postgres.stop()
        time.sleep(1.0)
        during = httpx.get(server.url + "/metrics").text
        time.sleep(2.0)
        postgres.start()
        time.sleep(0.5)
    finally:
        stop.set()
        worker.join()
    try:
        _wait_for(lambda: {r["request_id"] for r in read_records(url)} == set(sent), 15)
        after = httpx.get(server.url + "/metrics").text
    finally:
        server.stop()
    assert failures == [] and len(sent) > 50
    assert "switchllm_log_store_up 0.0" in during
    buffered = next(line for line in during.splitlines()
                    if line.startswith("switchllm_log_buffered_rows "))
    assert float(buffered.split()[1]) > 0
    assert "switchllm_log_store_up 1.0" in after
    assert "switchllm_log_dropped_rows_total 0.0" in after
    assert len(list(read_records(url))) == len(sent)  # none twice
    messages = [r.getMessage() for r in caplog.records]
    assert sum("cannot take writes" in m for m in messages) == 1  # once, not per row or retry
    assert sum("takes writes again" in m for m in messages) == 1


def test_a_full_buffer_drops_and_counts_new_rows(
    postgres: TempPostgres, caplog: pytest.LogCaptureFixture,  # noqa: F811
) -> None:
    url = fresh_database(postgres)
    log = DecisionLog(url, flush_s=0.05, max_pending=5)
    doomed = DecisionLog(url, flush_s=0.05, close_wait_s=0.3)
    try:
        postgres.stop()
        for i in range(8):
            log.record(_record(float(i)))
        log.flush_now()
        _wait_for(lambda: not log.status().store_up, 5)
        status = log.status()
        assert (status.buffered, status.dropped, status.written) == (5, 3, 0)
        # shut down while the database stays away: it says how many rows it could not write
        doomed.record(_record(100.0))
        doomed.record(_record(101.0))
        doomed.close()
        assert any("2 buffered rows were not written" in r.getMessage() for r in caplog.records)
    finally:
        postgres.start()
    _wait_for(lambda: log.status().written == 5)
    log.close()
    assert [r["ts"] for r in read_records(url)] == [0.0, 1.0, 2.0, 3.0, 4.0]


def test_sigterm_writes_every_buffered_row(postgres: TempPostgres,  # noqa: F811
                                           upstream: FakeUpstream) -> None:
    url = fresh_database(postgres)
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "switchllm", "serve", "--routers", "random", "--strong-model",
         "strong", "--weak-model", "weak", "--base-url", upstream.base_url, "--port", str(port),
         "--log-url", url, "--log-flush-ms", "60000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if httpx.get(base + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        for i in range(20):
            assert _chat(base, f"hello {i}").status_code == 200
        assert list(read_records(url)) == []  # held for the minute-long interval
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert process.returncode in (0, -signal.SIGTERM), err
    assert "decision log: postgresql://switchllm@127.0.0.1" in out
    assert len(list(read_records(url))) == 20


def test_bad_urls_fail_at_start_with_the_password_hidden(tmp_path: Path) -> None:
    url = f"postgresql://app:s3cret-pw@127.0.0.1:{free_port()}/nowhere"
    with pytest.raises(SwitchLLMError) as caught:
        DecisionLog(url)
    assert "cannot connect to decision log postgresql://app:***@127.0.0.1" in str(caught.value)
    assert "s3cret-pw" not in str(caught.value)
    with pytest.raises(SwitchLLMError) as caught:
        read_decisions(url)
    assert "s3cret-pw" not in str(caught.value)
    config = tmp_path / "serving.yaml"
    config.write_text("log: {url: 'mysql://app:s3cret-pw@db/x'}\n")
    with pytest.raises(SwitchLLMError) as caught:
        build_config(config_path=str(config), routers=["random"], strong_model="s",
                     weak_model="w")
    assert "postgresql://" in str(caught.value) and "s3cret-pw" not in str(caught.value)
    config.write_text("log: {url: 'postgresql://db.internal/x', buffer_rows: 1000}\n")
    parsed = build_config(config_path=str(config), routers=["random"], strong_model="s",
                          weak_model="w")
    assert parsed.log_location == "postgresql://db.internal/x"
    assert parsed.log_buffer_rows == 1000


def test_serve_refuses_both_log_flags(capsys: pytest.CaptureFixture) -> None:
    code = main(["serve", "--routers", "random", "--log", "x.sqlite", "--log-url",
                 "postgresql://db/x"])
    assert code == 2 and "not both" in capsys.readouterr().err


def test_the_sql_columns_are_the_record_fields() -> None:
    assert [name for name, _ in DECISION_TABLE] == COLUMNS
