"""Decision-log durability under load (issue 7, defect 9): rows lost to a SIGKILL, and to a
SIGTERM, against a real `switchllm serve` and a loopback upstream.

    python bench/durability.py                          # flush 200 ms (default) and 20 ms
    python bench/durability.py --flush-ms 200 --trials 3 --duration 5

Each trial: `--clients` keep-alive clients send chat requests for `--duration` seconds, then the
server is killed (-9, or SIGTERM) while they are still sending. Answered = 200 responses the
clients read in full; rows = the decision log's status-200 rows. A SIGKILL may lose the rows
written in the last flush interval (`log.flush_ms`), so the bench also reports answered req/s
x flush interval, what the setting promises at most. A SIGTERM must lose none.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, run_upstream, wait_port  # noqa: E402


def request(port: int, i: int) -> bytes:
    body = json.dumps({"model": "router-random-0.5", "messages": [
        {"role": "user", "content": f"durability probe {i}"}]}).encode()
    return (f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
            ).encode() + body


async def load(port: int, clients: int, duration: float, kill: callable) -> dict:
    """Clients send until the server dies; it is killed after `duration` seconds."""
    answered = 0
    counter = 0

    async def client() -> None:
        nonlocal answered, counter
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return
        while True:
            counter += 1
            writer.write(request(port, counter))
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                lower = head.lower()
                start = lower.index(b"content-length:") + 15
                await reader.readexactly(int(lower[start: lower.index(b"\r\n", start)]))
            except (OSError, asyncio.IncompleteReadError, ValueError):
                return
            if head.startswith(b"HTTP/1.1 200"):
                answered += 1

    tasks = [asyncio.ensure_future(client()) for _ in range(clients)]
    await asyncio.sleep(duration)
    killed_at = time.perf_counter()
    answered_at_kill = answered
    kill()
    await asyncio.wait(tasks, timeout=30)
    return {"answered": answered, "answered_before_signal": answered_at_kill,
            "signal_at": killed_at}


def rows(path: Path) -> int:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT COUNT(*) FROM decisions WHERE status = 200").fetchone()[0]


def trial(upstream_port: int, flush_ms: float, sig: int, args: argparse.Namespace) -> dict:
    tmp = Path(tempfile.mkdtemp(prefix="switchllm-bench-durability-"))
    log = tmp / "d.sqlite"
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWITCHLLM_CACHE_DIR": str(tmp / "cache")}
    server = subprocess.Popen(
        [sys.executable, "-m", "switchllm", "serve", "--routers", "random",
         "--strong-model", "strong", "--weak-model", "weak", "--router-threads", "1",
         "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--port", str(port),
         "--log", str(log), "--log-flush-ms", str(flush_ms)],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_port(port, server)
    result = asyncio.run(load(port, args.clients, args.duration,
                              lambda: server.send_signal(sig)))
    server.wait(60)
    stderr = server.stderr.read().decode(errors="replace") if server.stderr else ""
    logged = rows(log)
    answered = result["answered"]
    rate = result["answered_before_signal"] / args.duration
    return {"signal": signal.Signals(sig).name, "flush_ms": flush_ms, "answered": answered,
            "rows": logged, "lost": max(0, answered - logged),
            "lost_pct": round(100 * max(0, answered - logged) / max(1, answered), 3),
            "answered_per_s": round(rate),
            "promised_max_lost": round(rate * flush_ms / 1000),
            "tracebacks": stderr.count("Traceback")}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flush-ms", type=float, nargs="+", default=[200.0, 20.0])
    parser.add_argument("--trials", type=int, default=2)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds of load per trial")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--json", help="write the results here too")
    args = parser.parse_args()
    upstream_port = free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(upstream_port,),
                                               daemon=True)
    upstream.start()
    results = []
    try:
        for flush_ms in args.flush_ms:
            for _ in range(args.trials):
                results.append(trial(upstream_port, flush_ms, signal.SIGKILL, args))
                print(json.dumps(results[-1]), flush=True)
        results.append(trial(upstream_port, args.flush_ms[0], signal.SIGTERM, args))
        print(json.dumps(results[-1]), flush=True)
    finally:
        upstream.terminate()
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
