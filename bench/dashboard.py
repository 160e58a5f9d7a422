"""Benchmark the dashboard against a decision log of realistic size.

Fills a fresh decision log with N (default 100,000) realistic decisions spread over the last
hour (the dashboard's default window, so every row is aggregated: two routers, a ~30% strong
share, token counts and prices of gpt-4o / gpt-4o-mini, lognormal latencies, fallbacks, 429s,
502s and rejected requests), starts `switchllm serve` on it with a client key and a loopback
upstream, keeps light traffic flowing (new rows arrive while it is measured), then reports:

- `GET /v1/stats` time: cold (a fresh reader aggregating the whole window, as after start-up)
  and warm (what each dashboard refresh costs), for the 1-hour and 24-hour windows;
- the page in headless chromium: first paint and first contentful paint (Performance API), and
  the time until the numbers are drawn (the page's `switchllm:stats-rendered` mark), over
  several fresh page loads.

    python bench/dashboard.py [--rows 100000] [--loads 10] [--screenshot docs/dashboard.png]
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing as mp
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, run_upstream  # noqa: E402
from switchllm.serving.log_store import SQLiteStore  # noqa: E402
from switchllm.serving.stats import StatsQuery, StatsReader  # noqa: E402

KEY = "bench-dashboard-key"
STRONG, WEAK = "gpt-4o", "gpt-4o-mini"
PRICES = {STRONG: (2.50, 10.00), WEAK: (0.15, 0.60)}  # $ per 1M input / output tokens
PROMPTS = ["Explain the difference between TCP and UDP briefly.",
           "Write a haiku about autumn rain.", "Prove that the square root of 2 is irrational.",
           "Summarise this email in two sentences: the meeting moved to Thursday.",
           "What is the capital of Australia?", "Refactor this Python loop into a comprehension.",
           "Derive the closed form of the sum of the first n squares.",
           "Translate 'good morning' into French, Spanish and German."]


def fake_rows(n: int, end: float, span_s: float, seed: int = 0) -> list[tuple]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ts = end - span_s + span_s * (i + rng.random()) / n
        router, threshold = ("mf", 0.6121) if rng.random() < 0.8 else ("random", 0.7)
        win_rate = min(max(rng.gauss(0.58, 0.05), 0.0), 1.0) if router == "mf" else rng.random()
        routed = STRONG if win_rate >= threshold else WEAK
        prompt_tokens = int(rng.lognormvariate(5.3, 0.8))
        completion_tokens = int(rng.lognormvariate(5.5, 0.6))
        routing_ms = rng.lognormvariate(math.log(6 if router == "mf" else 0.3), 0.5)
        upstream_ms = rng.lognormvariate(math.log(900 if routed == STRONG else 450), 0.5)
        roll = rng.random()
        model, fallback, status = routed, 0, 200
        if roll < 0.004:  # the chosen model failed; the other answered
            model, fallback = (WEAK if routed == STRONG else STRONG), 1
        elif roll < 0.007:
            status = 429
        elif roll < 0.009:
            status = 502
        elif roll < 0.010:
            status = 400
        ok = status == 200
        cost = strong_cost = None
        if ok:
            cost = (prompt_tokens * PRICES[model][0] + completion_tokens * PRICES[model][1]) / 1e6
            strong_cost = (prompt_tokens * PRICES[STRONG][0]
                           + completion_tokens * PRICES[STRONG][1]) / 1e6
        rows.append((
            ts, router if status != 400 else "(rejected)", threshold, win_rate,
            model if ok else None, routed, STRONG, fallback, status, int(rng.random() < 0.3),
            routing_ms + upstream_ms, routing_ms, prompt_tokens if ok else None,
            completion_tokens if ok else None, cost, strong_cost, rng.choice(PROMPTS),
            f"req-{i:08x}", None, None, None, None, None))
    return rows


def fill_log(path: Path, n: int, end: float, span_s: float) -> float:
    started = time.perf_counter()
    store = SQLiteStore(path)
    store.write(fake_rows(n, end, span_s), [])
    store.close()
    return time.perf_counter() - started


def start_server(port: int, upstream_port: int, log: Path, config: Path) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    command = [sys.executable, "-m", "switchllm", "serve", "--routers", "random",
               "--config", str(config), "--strong-model", STRONG, "--weak-model", WEAK,
               "--port", str(port), "--log", str(log), "--log-prompts", "--api-keys", KEY,
               "--router-threads", "1"]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.1)
    raise SystemExit("the server did not start")


def traffic(url: str, stop: threading.Event, rate: float) -> None:
    """Light live traffic (about `rate` req/s), so the log is being written while measured."""
    import httpx

    headers = {"authorization": f"Bearer {KEY}"}
    with httpx.Client(timeout=10) as client:
        i = 0
        while not stop.is_set():
            body = {"model": "router-random-0.3",
                    "messages": [{"role": "user", "content": f"{PROMPTS[i % len(PROMPTS)]} #{i}"}]}
            client.post(url + "/v1/chat/completions", json=body, headers=headers)
            i += 1
            stop.wait(1 / rate)


def time_stats(url: str, window: str, n: int, path: str = "/v1/stats") -> list[float]:
    import httpx

    times = []
    with httpx.Client(timeout=30, headers={"authorization": f"Bearer {KEY}"}) as client:
        for _ in range(n):
            started = time.perf_counter()
            response = client.get(url + path, params={"window": window} if window else None)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
    return times


def browser_loads(url: str, loads: int, screenshot: Path | None) -> list[dict[str, float]]:
    from playwright.sync_api import expect, sync_playwright

    executable = os.environ.get("SWITCHLLM_CHROMIUM") or shutil.which("chromium") or \
        "/usr/bin/chromium"
    results = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        # the key, as the page's form stores it (an init script is not subject to the CSP)
        context = browser.new_context(viewport={"width": 1440, "height": 1000})
        context.add_init_script(f"sessionStorage.setItem('switchllm.apiKey', {json.dumps(KEY)})")
        for i in range(loads):
            page = context.new_page()
            page.goto(url + "/dashboard")
            expect(page.locator("#total-requests")).not_to_have_text("–", timeout=30_000)
            page.wait_for_timeout(50)
            timing = page.evaluate("""() => {
                const paint = Object.fromEntries(
                    performance.getEntriesByType('paint').map(e => [e.name, e.startTime]));
                const mark = performance.getEntriesByName('switchllm:stats-rendered')[0];
                return {first_paint: paint['first-paint'],
                        first_contentful_paint: paint['first-contentful-paint'],
                        numbers_drawn: mark ? mark.startTime : null};
            }""")
            results.append(timing)
            if screenshot is not None and i == loads - 1:
                page.wait_for_timeout(300)
                page.screenshot(path=str(screenshot), full_page=True)
            page.close()
        browser.close()
    return results


def summary(values: list[float]) -> str:
    values = sorted(values)
    p95 = values[min(len(values) - 1, math.ceil(0.95 * len(values)) - 1)]
    return (f"median {statistics.median(values):7.1f} ms   p95 {p95:7.1f} ms   "
            f"max {values[-1]:7.1f} ms   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--span", type=float, default=3300.0,
                        help="seconds the rows spread over, ending now (default 55 min)")
    parser.add_argument("--requests", type=int, default=40, help="timed /v1/stats calls")
    parser.add_argument("--loads", type=int, default=10, help="timed page loads")
    parser.add_argument("--rate", type=float, default=20.0, help="live req/s while measuring")
    parser.add_argument("--screenshot", type=Path, default=None)
    args = parser.parse_args()
    print(f"load average before: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")

    with tempfile.TemporaryDirectory(prefix="switchllm-dash-") as tmp:
        log = Path(tmp) / "decisions.sqlite"
        fill_s = fill_log(log, args.rows, time.time(), args.span)
        print(f"filled {log.name} with {args.rows:,} decisions in {fill_s:.1f} s "
              f"({log.stat().st_size / 1e6:.1f} MB)")
        for window in ("1h", "24h"):  # cold: a fresh reader, nothing cached
            reader = StatsReader.for_sqlite(log)
            query = StatsQuery(window_s=3600 if window == "1h" else 86400)
            started = time.perf_counter()
            stats = reader.stats(query)
            cold = (time.perf_counter() - started) * 1000
            reader.stats(query)  # the open bucket's finer parts get cached too
            wall, cpu = [], []
            for _ in range(20):
                started, started_cpu = time.perf_counter(), time.thread_time()
                reader.stats(query)
                wall.append((time.perf_counter() - started) * 1000)
                cpu.append((time.thread_time() - started_cpu) * 1000)
            reader.close()
            print(f"reader, window {window}: cold {cold:.0f} ms; warm median "
                  f"{statistics.median(wall):.1f} ms wall, {statistics.median(cpu):.1f} ms CPU "
                  f"({stats['totals']['requests']:,} decisions, "
                  f"{len(json.dumps(stats)) / 1000:.1f} kB of JSON)")

        upstream_port, port = free_port(), free_port()
        config = Path(tmp) / "serve.yaml"
        base = f"http://127.0.0.1:{upstream_port}/v1"
        config.write_text("models:\n" + "".join(
            f"  {name}: {{base_url: '{base}', input_price: {i}, output_price: {o}}}\n"
            for name, (i, o) in PRICES.items()))
        upstream = mp.Process(target=run_upstream, args=(upstream_port,), daemon=True)
        upstream.start()
        server = start_server(port, upstream_port, log, config)
        url = f"http://127.0.0.1:{port}"
        stop = threading.Event()
        load = threading.Thread(target=traffic, args=(url, stop, args.rate), daemon=True)
        try:
            load.start()
            time.sleep(3)  # the server aggregates the log's past in the background at start
            baseline = time_stats(url, "", args.requests, path="/health")
            print("GET /health (baseline, same run):           " + summary(baseline))
            for window in ("1h", "24h"):
                time_stats(url, window, 2)  # first call at this width fills the cache
                times = time_stats(url, window, args.requests)
                print(f"GET /v1/stats?window={window:<4} (warm, live traffic): " + summary(times)
                      + f"   {statistics.median(times) / statistics.median(baseline):.1f}x /health")
            loads = browser_loads(url, args.loads, args.screenshot)
            for name in ("first_paint", "first_contentful_paint", "numbers_drawn"):
                print(f"page {name.replace('_', ' '):<24}" + summary([t[name] for t in loads]))
            if args.screenshot:
                print(f"screenshot: {args.screenshot}")
            print(f"load average after: {os.getloadavg()[0]:.1f}")
        finally:
            stop.set()
            load.join(5)
            server.terminate()
            server.wait(10)
            upstream.terminate()


if __name__ == "__main__":
    main()
