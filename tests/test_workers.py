"""`switchllm serve --workers N`: one server made of N processes. Metrics summed across
workers, one decision log written by all of them without losing rows, and start and stop of all
workers together."""

from __future__ import annotations

import importlib
import os
import queue
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from switchllm.serving.decision_log import DecisionLog, DecisionRecord, read_records
from tests.serving_fixtures import FakeUpstream, free_port

ROOT = Path(__file__).resolve().parent.parent


def _record(ts: float) -> DecisionRecord:
    return DecisionRecord(
        ts=ts, router="random", threshold=0.5, win_rate=0.4, model="weak", routed_model="weak",
        strong_model="strong", fallback=False, status=200, stream=False, latency_ms=1.0,
        routing_ms=0.1, prompt_tokens=3, completion_tokens=4, cost_usd=0.0,
        strong_cost_usd=0.001,
    )


def test_concurrent_writers_to_one_log_lose_no_rows(tmp_path: Path) -> None:
    """What N workers do to one file: N writers (each with its own connection and thread)
    committing small batches as fast as they can."""
    path = tmp_path / "log.sqlite"
    logs = [DecisionLog(path, flush_s=0.001) for _ in range(4)]

    def fill(i: int) -> None:
        for j in range(2000):
            logs[i].record(_record(i * 10_000 + j))
            if j % 50 == 0:
                time.sleep(0.001)  # let the writers commit many small batches meanwhile

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(fill, range(4)))
    for log in logs:
        log.close(timeout=30)
    timestamps = sorted(r["ts"] for r in read_records(path))
    assert timestamps == sorted(i * 10_000 + j for i in range(4) for j in range(2000))
    assert all(log.dropped == 0 for log in logs)


def test_a_locked_log_delays_rows_and_loses_none(tmp_path: Path, monkeypatch) -> None:
    """Another process holding the write lock longer than the busy timeout used to cost the
    batch (and stop the writer thread for good); now the rows wait and are written after."""
    # A short lock wait, wherever the SQLite writer reads it (decision_log here; log_store
    # once the log has more than one backend). Left at its default the test only takes longer.
    for module, name in (("switchllm.serving.decision_log", "BUSY_TIMEOUT_S"),
                         ("switchllm.serving.log_store", "SQLITE_BUSY_TIMEOUT_S")):
        try:
            monkeypatch.setattr(importlib.import_module(module), name, 0.05, raising=False)
        except ImportError:
            continue
    path = tmp_path / "log.sqlite"
    log = DecisionLog(path, flush_s=0.01)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        for i in range(10):
            log.record(_record(float(i)))
        deadline = time.time() + 20
        while log.write_failures < 1 and time.time() < deadline:
            time.sleep(0.01)
        assert log.write_failures >= 1  # it tried and failed; the rows wait
    finally:
        holder.execute("COMMIT")
        holder.close()
    log.record(_record(10.0))
    log.close(timeout=10)
    assert [r["ts"] for r in read_records(path)] == [float(i) for i in range(11)]


class Workers:
    """`switchllm serve --workers N` in a subprocess, its output read by a thread."""

    def __init__(self, args: list[str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "switchllm", "serve", "--port", str(self.port), *args],
            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.output.append(line)
            self.lines.put(line)

    def wait_ready(self, timeout: float = 120) -> list[int]:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                if self.process.poll() is not None:
                    break
                continue
            match = re.search(r"(\d+) workers ready \(pids ([\d, ]+);", line)
            if match:
                return [int(p) for p in match.group(2).split(", ")]
        raise AssertionError("workers did not start:\n" + "".join(self.output))

    def stop(self) -> None:
        """SIGTERM first: a SIGKILLed parent would leave its workers running."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
        self.process.wait(10)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _worker_environment(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode().split("=", 1) for item in raw if b"=" in item)


def _requests_total(metrics: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines()
               if line.startswith("switchllm_requests_total{"))


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_workers_share_metrics_and_log_and_stop_together_on_sigterm(tmp_path: Path) -> None:
    upstream = FakeUpstream(record=False).start()
    log_path = tmp_path / "log.sqlite"
    # A minute-long flush interval: every row below reaches the file only through the
    # shutdown flush that SIGTERM starts, with both workers writing at the same moment.
    server = Workers(["--workers", "2", "--routers", "random", "--strong-model", "strong",
                      "--weak-model", "weak", "--base-url", upstream.base_url,
                      "--log", str(log_path), "--log-flush-ms", "60000",
                      "--api-keys", "sk-client"])
    key = {"Authorization": "Bearer sk-client"}  # /health names its process only to a client
    requests = 120
    try:
        pids = server.wait_ready()
        assert len(pids) == 2
        shared = {_worker_environment(pid).get("PROMETHEUS_MULTIPROC_DIR") for pid in pids}
        assert len(shared) == 1 and None not in shared
        metrics_dir = Path(shared.pop())
        assert metrics_dir.is_dir() and (metrics_dir.stat().st_mode & 0o077) == 0

        body = {"model": "router-random-0.5", "messages": [{"role": "user", "content": "hi"}]}

        def call(i: int) -> tuple[int, int]:
            # a fresh connection per request: the kernel hands each to either worker
            with httpx.Client(base_url=server.url, headers=key) as client:
                status = client.post("/v1/chat/completions", json=body).status_code
                return status, client.get("/health").json()["pid"]

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(call, range(requests)))
        assert [status for status, _ in answers] == [200] * requests
        assert {pid for _, pid in answers} == set(pids)  # both workers served

        # /metrics from either worker shows the whole server's count.
        totals: dict[int, float] = {}
        deadline = time.time() + 30
        while set(totals) != set(pids) and time.time() < deadline:
            with httpx.Client(base_url=server.url, headers=key) as client:  # one worker
                pid = client.get("/health").json()["pid"]
                totals[pid] = _requests_total(client.get("/metrics").text)
        assert totals == {pid: float(requests) for pid in pids}
        assert not log_path.exists() or len(list(read_records(log_path))) == 0  # not yet

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(60) == 0
    finally:
        server.stop()
        upstream.stop()
    assert not any(_alive(pid) for pid in pids)
    assert not metrics_dir.exists()  # the parent removed the shared metrics directory
    rows = list(read_records(log_path))
    assert len(rows) == requests and all(r["status"] == 200 for r in rows)
    assert len({r["request_id"] for r in rows}) == requests


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="needs Linux /proc")
def test_workers_of_a_killed_parent_flush_their_rows_and_exit(tmp_path: Path) -> None:
    upstream = FakeUpstream(record=False).start()
    log_path = tmp_path / "log.sqlite"
    server = Workers(["--workers", "2", "--routers", "random", "--strong-model", "strong",
                      "--weak-model", "weak", "--base-url", upstream.base_url,
                      "--log", str(log_path), "--log-flush-ms", "60000"])
    try:
        pids = server.wait_ready()
        metrics_dir = _worker_environment(pids[0])["PROMETHEUS_MULTIPROC_DIR"]
        body = {"model": "router-random-0.5", "messages": [{"role": "user", "content": "hi"}]}
        with ThreadPoolExecutor(8) as pool:
            statuses = list(pool.map(
                lambda _: httpx.post(server.url + "/v1/chat/completions", json=body).status_code,
                range(40)))
        assert statuses == [200] * 40
        server.process.kill()  # the parent gets no chance to stop its workers
        server.process.wait(10)
        deadline = time.time() + 30
        while any(_alive(pid) for pid in pids) and time.time() < deadline:
            time.sleep(0.1)
        assert not any(_alive(pid) for pid in pids)  # no orphan keeps serving
    finally:
        server.stop()
        upstream.stop()
        if "metrics_dir" in locals():  # a killed parent cannot remove it
            shutil.rmtree(metrics_dir, ignore_errors=True)
    assert len(list(read_records(log_path))) == 40  # each worker flushed as it stopped


def test_a_worker_that_cannot_start_stops_the_server_with_the_reason(tmp_path: Path) -> None:
    server = Workers(["--workers", "2", "--routers", "no-such-router", "--strong-model", "s",
                      "--weak-model", "w", "--base-url", "http://127.0.0.1:9/v1", "--no-log"])
    try:
        code = server.process.wait(120)  # it stops rather than restarting workers forever
    finally:
        server.stop()
    output = "".join(server.output)
    assert code != 0
    assert "unknown router 'no-such-router'" in output and "Traceback" not in output
    assert "a worker failed to start" in output
