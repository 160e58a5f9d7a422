"""Benchmark the Postgres decision log: are rows lost under load, on SIGTERM, or while the
database is down?

Starts a throw-away Postgres (tests/postgres_fixture.py; fsync on), the fake upstream of
bench/server.py, and `switchllm serve --routers random --log-url ...`, then:

1. baseline: req/s with the SQLite log against the Postgres log, alternating in rounds;
2. steady: `--duration` seconds of load (default 60), then SIGTERM: rows lost = 200 answers
   the clients got minus status-200 rows in Postgres;
3. SIGTERM mid-load: with a 5 s flush interval the rows are in memory when the signal comes;
4. outage: Postgres stopped for `--outage` seconds (default 10) in the middle of a run:
   failed client requests, the buffer's peak (from /metrics), and how long after Postgres is
   back every row has arrived.

    python bench/postgres_log.py                       # the issue's numbers (~3 minutes)
    python bench/postgres_log.py --duration 10 --outage 3   # quick

Upstream, server, Postgres and the load generator share this machine's cores: req/s is a floor,
compare the ratio to the SQLite baseline of the same run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_port  # noqa: E402
from bench.server import read_response, request_bytes, run_upstream  # noqa: E402
from tests.postgres_fixture import TempPostgres, require_postgres  # noqa: E402, F401

MODEL = "router-random-0.5"


def start_server(upstream_port: int, log_args: list[str], work: Path) -> tuple:
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWITCHLLM_CACHE_DIR": str(work / "cache")}
    command = [sys.executable, "-m", "switchllm", "serve", "--routers", "random",
               "--strong-model", "strong", "--weak-model", "weak",
               "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--port", str(port),
               *log_args]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True)
    wait_port(port, process)
    return process, port


def stop_server(process: subprocess.Popen) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=60)
    return err


def count_rows(url: str) -> int:
    import psycopg

    with psycopg.connect(url) as connection:
        return connection.execute("SELECT count(*) FROM decisions WHERE status = 200"
                                  ).fetchone()[0]


def fresh(pg: TempPostgres, name: str) -> str:
    pg.psql(f"CREATE DATABASE {name}")
    return pg.url.rsplit("/", 1)[0] + f"/{name}"


async def _load(port: int, clients: int, duration: float, offset: int) -> dict:
    """Keep-alive clients sending distinct prompts for `duration` s. A client whose connection
    is refused stops (the server is shutting down): counted in `refused`, not `failures`."""
    stop_at = time.perf_counter() + duration
    counts = {"ok": 0, "failures": 0, "refused": 0}
    sent = [0]

    async def worker() -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            counts["refused"] += 1
            return
        while time.perf_counter() < stop_at:
            sent[0] += 1
            writer.write(request_bytes(port, MODEL, False, offset + sent[0]))
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                counts["failures"] += 1  # sent, never answered
                writer.close()
                try:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                except OSError:
                    counts["refused"] += 1
                    return
                continue
            counts["ok" if status == 200 else "failures"] += 1
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    counts["rps"] = counts["ok"] / (time.perf_counter() - began)
    return counts


def run_load(port: int, clients: int, duration: float, offset: int) -> dict:
    return asyncio.run(_load(port, clients, duration, offset))


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=60.0, help="steady run, seconds")
    parser.add_argument("--outage", type=float, default=10.0, help="Postgres down, seconds")
    parser.add_argument("--baseline", type=float, default=15.0,
                        help="seconds of load per log backend in the req/s comparison")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternations of the req/s comparison")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--output", help="write the results as JSON here")
    args = parser.parse_args()

    results: dict = {"clients": args.clients}
    up_port = free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(up_port, 0.0),
                                               daemon=True)
    upstream.start()
    wait_port(up_port)
    with tempfile.TemporaryDirectory(prefix="switchllm-pgbench-") as tmp, \
            TempPostgres(durable=True) as pg:
        work = Path(tmp)
        # 1. req/s: SQLite log against Postgres log, alternating, so that load from other
        # jobs on the machine hits both alike; the median of the per-round ratios
        url = fresh(pg, "compare")
        sqlite_server = start_server(up_port, ["--log", str(work / "d.sqlite")], work)
        pg_server = start_server(up_port, ["--log-url", url], work)
        rounds = []
        for i in range(args.rounds):
            seconds = args.baseline / args.rounds
            sqlite_rps = run_load(sqlite_server[1], args.clients, seconds, 2 * i * 100_000)["rps"]
            pg_rps = run_load(pg_server[1], args.clients, seconds, (2 * i + 1) * 100_000)["rps"]
            rounds.append((sqlite_rps, pg_rps))
        stop_server(sqlite_server[0])
        stop_server(pg_server[0])
        ratios = sorted(p / s for s, p in rounds)
        results["rps"] = {"rounds": [[round(s, 1), round(p, 1)] for s, p in rounds],
                          "median_ratio": round(ratios[len(ratios) // 2], 3)}
        print(f"req/s at c={args.clients}, (SQLite log, Postgres log) per round: "
              f"{[(round(s), round(p)) for s, p in rounds]}; median ratio "
              f"{ratios[len(ratios) // 2]:.2f}", flush=True)

        # 2. steady run, then SIGTERM
        url = fresh(pg, "steady")
        process, port = start_server(up_port, ["--log-url", url], work)
        steady = run_load(port, args.clients, args.duration, 2_000_000)
        stop_server(process)
        rows = count_rows(url)
        results["steady"] = {"seconds": args.duration, "ok": steady["ok"],
                             "failures": steady["failures"], "rows": rows,
                             "lost": max(0, steady["ok"] - rows), "rps": round(steady["rps"], 1)}
        print(f"steady {args.duration:.0f} s: {steady['ok']} answered, {rows} rows, "
              f"{max(0, steady['ok'] - rows)} lost", flush=True)

        # 3. SIGTERM while under load, rows still in memory (5 s flush interval)
        url = fresh(pg, "sigterm")
        process, port = start_server(up_port, ["--log-url", url, "--log-flush-ms", "5000"],
                                     work)
        timer = threading.Timer(3.0, process.send_signal, (signal.SIGTERM,))
        timer.start()
        term = run_load(port, args.clients, 5.0, 3_000_000)
        process.communicate(timeout=60)
        rows = count_rows(url)
        results["sigterm"] = {"ok": term["ok"], "rows": rows, "lost": max(0, term["ok"] - rows),
                              "unanswered_after_signal": term["failures"] + term["refused"]}
        print(f"SIGTERM under load: {term['ok']} answered, {rows} rows, "
              f"{max(0, term['ok'] - rows)} lost ({term['failures'] + term['refused']} requests "
              "unanswered after the signal: the server stops accepting)", flush=True)

        # 4. Postgres down mid-run
        url = fresh(pg, "outage")
        process, port = start_server(up_port, ["--log-url", url], work)
        lead = 5.0
        total = lead + args.outage + 5.0
        peak = {"buffered": 0.0, "store_up_seen_0": False}
        back_at: list[float] = []
        drained: list[float] = []

        def outage() -> None:
            time.sleep(lead)
            pg.stop()
            until = time.monotonic() + args.outage
            while time.monotonic() < until:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                peak["buffered"] = max(peak["buffered"], metric(text,
                                                                "switchllm_log_buffered_rows"))
                peak["store_up_seen_0"] |= metric(text, "switchllm_log_store_up") == 0
                time.sleep(0.5)
            pg.start()
            back_at.append(time.monotonic())
            # drained: the store is up again and what is buffered is no more than one normal
            # flush interval's worth (200 ms of traffic)
            while time.monotonic() < back_at[0] + 60:
                text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
                if (metric(text, "switchllm_log_store_up") == 1
                        and metric(text, "switchllm_log_buffered_rows") < 1000):
                    drained.append(time.monotonic() - back_at[0])
                    break
                time.sleep(0.05)

        controller = threading.Thread(target=outage)
        controller.start()
        run = run_load(port, args.clients, total, 4_000_000)
        controller.join()
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and count_rows(url) < run["ok"]:
            time.sleep(0.1)
        caught_up = drained[0] if drained else None
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
        err = stop_server(process)
        rows = count_rows(url)
        results["outage"] = {
            "seconds_down": args.outage, "ok": run["ok"], "failures": run["failures"],
            "rows": rows, "lost": max(0, run["ok"] - rows), "peak_buffered": peak["buffered"],
            "store_up_reported_0": peak["store_up_seen_0"],
            "dropped": metric(text, "switchllm_log_dropped_rows_total"),
            "buffer_drained_s_after_restart": (None if caught_up is None
                                               else round(caught_up, 2)),
            "log_lines": [line for line in err.splitlines() if "decision log" in line],
        }
        print(f"Postgres down {args.outage:.0f} s: {run['ok']} answered, {run['failures']} "
              f"failed, peak buffer {peak['buffered']:.0f} rows, drained "
              f"{caught_up if caught_up is None else round(caught_up, 2)} s after Postgres "
              f"came back; {rows} rows, {max(0, run['ok'] - rows)} lost", flush=True)
        for line in results["outage"]["log_lines"]:
            print("  server log:", line)
    upstream.terminate()
    if args.output:
        Path(args.output).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
