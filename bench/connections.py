"""Connection limits under load (issue 7, defect 2): 10,000 idle connections, slowloris heads,
and connections beyond the cap, against a real `switchllm serve` and a loopback upstream.

    python bench/connections.py                        # 10,000 idle, cap 10,000
    python bench/connections.py --idle 2000 --cap 2000 --header-timeout 10

Phases, in one run:
1. baseline: GET /health latency over kept-alive connections, nothing else open;
2. the idle connections are opened (and a few slowloris clients start dribbling one header
   byte every 2 s); /health is measured again over the same kept-alive connections;
3. more connections are offered beyond the cap: each should get a 503 JSON answer at once;
4. the idle and slowloris connections should all be closed by the server within the header
   timeout of being opened.

The server's soft open-files limit is raised to its hard limit by `serve` itself; as root the
bench also raises the hard limit of the server process (--server-nofile) so that the cap, not
the descriptor table, is what limits it. Upstream, server and load share the machine's cores.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, run_upstream, wait_port  # noqa: E402


def raise_own_limit(want: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    for limits in ((max(want, hard), max(want, hard)), (hard, hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            break
        except (ValueError, OSError):
            continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


HEALTH = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n"


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lower = head.lower()
    start = lower.index(b"content-length:") + 15
    length = int(lower[start: lower.index(b"\r\n", start)])
    return int(head[9:12]), await reader.readexactly(length)


def percentiles(values: list[float]) -> dict[str, float]:
    values = sorted(values)
    if not values:
        return {"n": 0}

    def at(q: float) -> float:
        return round(values[min(len(values) - 1, int(q * len(values)))] * 1000, 2)

    return {"n": len(values), "p50_ms": at(0.5), "p99_ms": at(0.99),
            "max_ms": round(values[-1] * 1000, 2), "mean_ms": round(
                statistics.fmean(values) * 1000, 2)}


async def health_latencies(streams: list, duration: float) -> tuple[list[float], int]:
    """Sequential GET /health on each kept-alive connection, all at once, for `duration`."""
    latencies: list[float] = []
    failures = 0
    stop = time.perf_counter() + duration

    async def one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal failures
        while time.perf_counter() < stop:
            started = time.perf_counter()
            writer.write(HEALTH)
            try:
                status, _ = await asyncio.wait_for(read_response(reader), 5)
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                failures += 1
                return
            if status != 200:
                failures += 1
            latencies.append(time.perf_counter() - started)
            await asyncio.sleep(0.005)

    await asyncio.gather(*(one(r, w) for r, w in streams))
    return latencies, failures


async def open_idle(port: int, count: int, batch: int = 250) -> tuple[list, int]:
    held: list = []
    failed = 0

    async def one() -> None:
        nonlocal failed
        try:
            held.append(await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10))
        except (TimeoutError, OSError):
            failed += 1

    for start in range(0, count, batch):
        await asyncio.gather(*(one() for _ in range(min(batch, count - start))))
    return held, failed


async def slowloris(port: int, opened: list[float], closed: list[float]) -> None:
    """One header byte every 2 s, until the server closes the connection."""
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return
    started = time.monotonic()
    opened.append(started)
    head = b"GET /health HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: " + b"a" * 10_000
    try:
        for byte in head:
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                await asyncio.wait_for(reader.read(1024), 2.0)
                break  # an answer (408) or the server's close
            except TimeoutError:
                continue
    except OSError:
        pass
    closed.append(time.monotonic() - started)
    writer.close()


async def beyond_cap(port: int, count: int) -> dict:
    outcomes: dict[str, int] = {}
    latencies: list[float] = []

    async def one() -> None:
        started = time.perf_counter()
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 5)
            writer.write(HEALTH)
            status, body = await asyncio.wait_for(read_response(reader), 5)
            code = json.loads(body).get("error", {}).get("code") if status != 200 else None
            key = f"{status} {code}" if code else str(status)
            writer.close()
        except (TimeoutError, OSError, asyncio.IncompleteReadError) as exc:
            key = type(exc).__name__
        latencies.append(time.perf_counter() - started)
        outcomes[key] = outcomes.get(key, 0) + 1

    for start in range(0, count, 100):
        await asyncio.gather(*(one() for _ in range(min(100, count - start))))
    return {"outcomes": outcomes, "latency": percentiles(latencies)}


async def idle_states(held: list, wait_until: float) -> dict[str, int]:
    """What became of `held` by `wait_until` (monotonic): refused with a 503, answered with
    something else, closed silently, or still open."""
    await asyncio.sleep(max(0.0, wait_until - time.monotonic()))
    states = {"refused_503": 0, "answered_other": 0, "closed": 0, "open": 0}
    for reader, _ in held:
        try:
            data = await asyncio.wait_for(reader.read(64), 0.001)
        except TimeoutError:
            states["open"] += 1
            continue
        except OSError:
            data = b""
        if data.startswith(b"HTTP/1.1 503"):
            states["refused_503"] += 1
        elif data:
            states["answered_other"] += 1
        else:
            states["closed"] += 1
    return states


async def bench(port: int, args: argparse.Namespace) -> dict:
    keep = [await asyncio.open_connection("127.0.0.1", port) for _ in range(args.health_clients)]
    baseline, base_fail = await health_latencies(keep, args.duration)
    result: dict = {"baseline_health": {**percentiles(baseline), "failures": base_fail}}

    opened_at = time.monotonic()
    lorises_opened: list[float] = []
    lorises_closed: list[float] = []
    loris_tasks = [asyncio.ensure_future(slowloris(port, lorises_opened, lorises_closed))
                   for _ in range(args.slowloris)]
    held, failed = await open_idle(port, args.idle)
    opened_in = time.monotonic() - opened_at
    await asyncio.sleep(0.5)  # let refusals of the last batch arrive
    loaded, loaded_fail = await health_latencies(keep, args.duration)
    result["idle"] = {"offered": args.idle, "connected": len(held), "connect_failed": failed,
                      "opened_in_s": round(opened_in, 2)}
    result["health_with_idle"] = {**percentiles(loaded), "failures": loaded_fail}
    result["p99_ratio_vs_baseline"] = round(
        result["health_with_idle"]["p99_ms"] / max(result["baseline_health"]["p99_ms"], 1e-3), 2)
    result["beyond_cap"] = await beyond_cap(port, args.beyond)
    # phase 4: everything idle should be closed by the header timeout (from when it opened)
    deadline = opened_at + opened_in + args.header_timeout + 1.5
    result["idle_after_header_timeout"] = await idle_states(held, deadline)
    result["idle_checked_after_s"] = round(deadline - opened_at, 1)
    await asyncio.gather(*loris_tasks)
    result["slowloris"] = {"clients": len(lorises_opened),
                           "closed_after_s_max": round(max(lorises_closed, default=0.0), 2),
                           "closed_after_s_min": round(min(lorises_closed, default=0.0), 2)}
    for _, writer in held + keep:
        writer.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--idle", type=int, default=10_000, help="idle connections offered")
    parser.add_argument("--cap", type=int, default=10_000, help="the server's --max-connections")
    parser.add_argument("--beyond", type=int, default=1_000,
                        help="connections offered while at the cap")
    parser.add_argument("--slowloris", type=int, default=50)
    parser.add_argument("--health-clients", type=int, default=4)
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per /health run")
    parser.add_argument("--header-timeout", type=float, default=30.0,
                        help="the server's --header-timeout (long enough to hold the idle "
                             "connections while /health is measured)")
    parser.add_argument("--server-nofile", type=int, default=65_536,
                        help="hard open-files limit for the server process (root only)")
    parser.add_argument("--json", help="write the result here too")
    args = parser.parse_args()

    own = raise_own_limit(args.idle + args.beyond + 1024)
    upstream_port, port = free_port(), free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(upstream_port,),
                                               daemon=True)
    upstream.start()
    tmp = Path(tempfile.mkdtemp(prefix="switchllm-bench-conn-"))
    stderr_path = tmp / "server.stderr"

    def server_limits() -> None:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.server_nofile, args.server_nofile))
        except (ValueError, OSError):
            pass

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SWITCHLLM_CACHE_DIR": str(tmp / "cache")}
    with open(stderr_path, "wb") as stderr:
        server = subprocess.Popen(
            [sys.executable, "-m", "switchllm", "serve", "--routers", "random",
             "--strong-model", "strong", "--weak-model", "weak",
             "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--port", str(port),
             "--log", str(tmp / "d.sqlite"), "--max-connections", str(args.cap),
             "--header-timeout", str(args.header_timeout)],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=stderr,
            preexec_fn=server_limits)
    try:
        wait_port(port, server)
        result = asyncio.run(bench(port, args))
        result["server_alive"] = server.poll() is None
        with open(f"/proc/{server.pid}/status") as status:
            rss = next(line for line in status if line.startswith("VmHWM"))
        result["server_peak_rss"] = rss.split(":")[1].strip()
    finally:
        server.terminate()
        server.wait(30)
        upstream.terminate()
    log_text = stderr_path.read_text(errors="replace")
    result["server_notices"] = [line for line in log_text.splitlines() if "warning" in line]
    result["server_stderr_bytes"] = stderr_path.stat().st_size
    result["server_stderr_tracebacks"] = stderr_path.read_text(errors="replace").count(
        "Traceback")
    result["settings"] = {"idle": args.idle, "cap": args.cap, "header_timeout_s":
                          args.header_timeout, "bench_nofile": own, "cpus": os.cpu_count()}
    text = json.dumps(result, indent=2)
    print(text)
    if args.json:
        Path(args.json).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
