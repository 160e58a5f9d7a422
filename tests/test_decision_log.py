"""The decision log's durability promises: SIGHUP writes it at once and the server serves on,
SIGTERM loses nothing, the file is private to its owner."""

from __future__ import annotations

import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx

from switchllm.serving.decision_log import DecisionLog, DecisionRecord, connect, read_records
from tests.serving_fixtures import FakeUpstream, free_port


def _record(ts: float) -> DecisionRecord:
    return DecisionRecord(ts=ts, router="random", threshold=0.5, win_rate=0.4, model="weak",
                          routed_model="weak", strong_model="strong", fallback=False, status=200,
                          stream=False, latency_ms=1.0, routing_ms=0.1, prompt_tokens=3,
                          completion_tokens=2, cost_usd=None, strong_cost_usd=None)


def test_log_file_is_private_and_flush_now_writes_before_the_interval(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.sqlite", flush_s=60.0)
    try:
        assert stat.S_IMODE(os.stat(tmp_path / "d.sqlite").st_mode) == 0o600
        log.record(_record(1.0))
        time.sleep(0.2)
        assert list(read_records(log.path)) == []  # not yet: the interval is a minute
        log.flush_now()
        deadline = time.time() + 5
        while time.time() < deadline and not list(read_records(log.path)):
            time.sleep(0.02)
        assert [r["ts"] for r in read_records(log.path)] == [1.0]
    finally:
        log.close()


def test_serve_flushes_on_sighup_and_keeps_serving_then_sigterm_loses_nothing(
    tmp_path: Path,
) -> None:
    upstream = FakeUpstream().start()
    port = free_port()
    log_path = tmp_path / "log.sqlite"
    process = subprocess.Popen(
        [sys.executable, "-m", "switchllm", "serve", "--routers", "random", "--strong-model",
         "strong", "--weak-model", "weak", "--base-url", upstream.base_url, "--port", str(port),
         "--log", str(log_path), "--log-flush-ms", "60000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    body = {"model": "router-random-0", "messages": [{"role": "user", "content": "hi"}]}

    def rows() -> int:
        return len(list(read_records(log_path))) if log_path.exists() else 0

    try:
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        for _ in range(3):
            assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        time.sleep(0.3)
        assert rows() == 0  # held for the minute-long interval
        process.send_signal(signal.SIGHUP)
        deadline = time.time() + 5
        while time.time() < deadline and rows() < 3:
            time.sleep(0.05)
        assert rows() == 3
        assert process.poll() is None  # still serving
        assert httpx.post(url + "/v1/chat/completions", json=body).status_code == 200
        assert stat.S_IMODE(os.stat(log_path).st_mode) == 0o600
    finally:
        process.terminate()
        process.communicate(timeout=15)
        upstream.stop()
    # uvicorn shuts down gracefully, then re-raises SIGTERM so the exit status tells why
    assert process.returncode in (0, -signal.SIGTERM)
    assert rows() == 4  # the last request was written at shutdown


def test_old_log_files_are_readable_then_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    old = sqlite3.connect(path)
    old.execute("CREATE TABLE decisions (ts REAL NOT NULL, router TEXT, threshold REAL, "
                "win_rate REAL, model TEXT, routed_model TEXT, strong_model TEXT, fallback "
                "INTEGER NOT NULL DEFAULT 0, status INTEGER NOT NULL, stream INTEGER NOT NULL "
                "DEFAULT 0, latency_ms REAL, routing_ms REAL, prompt_tokens INTEGER, "
                "completion_tokens INTEGER, cost_usd REAL, strong_cost_usd REAL, prompt TEXT)")
    old.execute("INSERT INTO decisions (ts, status, strong_model) VALUES (1.0, 200, 's')")
    old.commit()
    old.close()
    row = next(read_records(path))  # readable before migration: newer columns read as None
    assert row["request_id"] is None and row["route_group"] is None
    connect(path).close()
    columns = [r[1] for r in sqlite3.connect(path).execute("PRAGMA table_info(decisions)")]
    assert columns[17:] == ["request_id", "route_group", "predicted_quality",
                            "expected_cost_usd", "best_model", "best_cost_usd"]
    assert {"route_group", "predicted_quality", "best_cost_usd"} <= set(columns)
    assert [r["status"] for r in read_records(path)] == [200]


def test_a_large_batch_lands_whole_and_in_order(tmp_path: Path) -> None:
    """The SQLite writer inserts many rows per statement (log_store._sqlite_insert_many): every
    row of a batch spanning several statements arrives once, in order, with its values."""
    from dataclasses import astuple

    from switchllm.serving.log_store import SQLiteStore

    store = SQLiteStore(tmp_path / "d.sqlite")
    records = [_record(1_800_000_000.0 + i) for i in range(2_345)]
    for i, r in enumerate(records):
        r.request_id = f"req-{i}"
    store.write([astuple(r) for r in records], [])
    rows = list(store.decisions())
    store.close()
    assert [r["request_id"] for r in rows] == [f"req-{i}" for i in range(2_345)]
    assert rows[1_234]["ts"] == 1_800_000_000.0 + 1_234 and rows[1_234]["model"] == "weak"
