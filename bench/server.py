"""Benchmark `switchllm serve` against a fast local OpenAI-compatible upstream.

Measures (1) the latency the server adds over calling the upstream directly, at concurrency 1,
(2) requests per second at 64 concurrent clients, streaming and not, for the random router and
(if a card is available) mf, and optionally (3) a run in which the strong upstream answers HTTP
500 to 20% of calls, counting failed requests (fallback should absorb them all).

    python bench/server.py                     # quick: 5 s per throughput run
    python bench/server.py --duration 10 --fail-duration 60

The upstream, the server and the load generator run as three processes on this machine, so on a
2-core box they compete for CPU: the numbers are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MESSAGES = [{"role": "user", "content": "Explain the difference between TCP and UDP briefly."}]
TOPICS = ["TCP and UDP", "a list and a tuple", "RAM and disk", "HTTP/1.1 and HTTP/2",
          "a mutex and a semaphore", "sorting and hashing", "Paris and Rome", "mitosis"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_upstream(port: int, strong_fail_rate: float) -> None:
    from tests.serving_fixtures import FakeUpstream

    async def main() -> None:
        upstream = FakeUpstream(record=False)
        upstream.behaviour("strong").fail_rate = strong_fail_rate
        await upstream.serve(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def start_server(port: int, upstream_port: int, router: str, log: str,
                 extra: list[str] | None = None) -> subprocess.Popen:
    # A private embedding cache: every bench prompt is new, as real traffic is, and the shared
    # cache is not filled with bench prompts.
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SWITCHLLM_CACHE_DIR": str(Path(log).parent / "cache")}
    command = [
        sys.executable, "-m", "switchllm", "serve", "--routers", router,
        "--strong-model", "strong", "--weak-model", "weak",
        "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--port", str(port), "--log", log,
        *(extra or []),
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_port(port, process)
    return process


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")


# ---- a lean HTTP/1.1 keep-alive load generator ---------------------------------------------
SAME_PROMPT = False  # --same-prompt: every request sends MESSAGES (router caches answer)
_RUNS = [0]


def request_bytes(port: int, model: str, stream: bool, i: int | None = None) -> bytes:
    """One request; with `i`, a distinct prompt, so no cache can answer the router for free."""
    messages = MESSAGES
    if i is not None and not SAME_PROMPT:
        topic = TOPICS[i % len(TOPICS)]
        messages = [{"role": "user", "content": f"Question {i}: explain {topic} in {i % 97 + 3} "
                     "sentences for a student."}]
    body = json.dumps({"model": model, "messages": messages, "stream": stream}).encode()
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body


async def read_response(reader: asyncio.StreamReader) -> int:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    lower = head.lower()
    if b"transfer-encoding: chunked" in lower:
        while True:
            size = int((await reader.readuntil(b"\r\n")).strip(), 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    else:
        start = lower.index(b"content-length:") + 15
        length = int(lower[start : lower.index(b"\r\n", start)])
        await reader.readexactly(length)
    return status


async def load(port: int, model: str, stream: bool, clients: int, duration: float,
               count: int | None = None, offset: int = 0) -> dict:
    payloads = [request_bytes(port, model, stream, offset + i) for i in range(20_000)]
    sent = 0
    latencies: list[float] = []
    failures = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal failures, sent
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while time.perf_counter() < stop_at and (count is None or len(latencies) < count):
            started = time.perf_counter()
            writer.write(payloads[sent % len(payloads)])
            sent += 1
            try:
                status = await read_response(reader)
            except (asyncio.IncompleteReadError, ConnectionError):
                failures += 1
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                continue
            if status != 200:
                failures += 1
            latencies.append(time.perf_counter() - started)
        writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies),
        "failures": failures,
        "rps": len(latencies) / elapsed,
        "p50_ms": latencies[len(latencies) // 2] * 1000 if latencies else float("nan"),
        "p99_ms": latencies[int(len(latencies) * 0.99)] * 1000 if latencies else float("nan"),
    }


def measure(port: int, model: str, stream: bool, clients: int, duration: float,
            count: int | None = None) -> dict:
    # every run (and its warm-up) gets prompts no earlier run sent
    _RUNS[0] += 2
    asyncio.run(load(port, model, stream, clients, 1.0, 200, offset=_RUNS[0] * 1_000_000))
    return asyncio.run(load(port, model, stream, clients, duration, count,
                            offset=(_RUNS[0] + 1) * 1_000_000))


def mf_available() -> str | None:
    try:
        from switchllm.routers import load_router

        load_router("mf")
    except Exception as exc:  # noqa: BLE001 - any failure means: skip with the reason
        return str(exc)
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--latency-requests", type=int, default=1000)
    parser.add_argument("--fail-duration", type=float, default=0.0,
                        help="seconds of the 20%%-strong-failures run (0: skip; the target: 60)")
    parser.add_argument("--routers", default="random,mf",
                        help="comma-separated router names or NAME=CARD_DIR")
    parser.add_argument("--same-prompt", action="store_true",
                        help="send one prompt every time (measures the embedding-cache path)")
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `switchllm serve` argument, repeatable")
    args = parser.parse_args()
    global SAME_PROMPT
    SAME_PROMPT = args.same_prompt

    up_port = free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(up_port, 0.0),
                                               daemon=True)
    upstream.start()
    wait_port(up_port)
    results: dict[str, dict] = {}
    tmp = tempfile.mkdtemp(prefix="switchllm-bench-")
    try:
        for stream in (False, True):
            kind = "stream" if stream else "plain"
            direct = measure(up_port, "strong", stream, 1, 30, args.latency_requests)
            results[f"direct upstream {kind} c=1"] = direct
        for spec in args.routers.split(","):
            router = spec.partition("=")[0]
            if spec == "mf" and (reason := mf_available()):
                print(f"mf: skipped ({reason})")
                continue
            port = free_port()
            server = start_server(port, up_port, spec, f"{tmp}/{router}.sqlite",
                                  args.server_arg)
            try:
                model = f"router-{router}-0.5"
                for stream in (False, True):
                    kind = "stream" if stream else "plain"
                    results[f"{router} {kind} c=1"] = measure(
                        port, model, stream, 1, 30, args.latency_requests)
                    results[f"{router} {kind} c={args.clients}"] = measure(
                        port, model, stream, args.clients, args.duration)
            finally:
                server.terminate()
                server.wait()
        if args.fail_duration > 0:
            fail_up = free_port()
            failing = mp.get_context("spawn").Process(target=run_upstream, args=(fail_up, 0.2),
                                                      daemon=True)
            failing.start()
            wait_port(fail_up)
            port = free_port()
            server = start_server(port, fail_up, "random", f"{tmp}/fail.sqlite")
            try:
                results["random plain, strong 500 on 20%"] = asyncio.run(load(
                    port, "router-random-0.5", False, args.clients, args.fail_duration))
            finally:
                server.terminate()
                server.wait()
                failing.terminate()
    finally:
        upstream.terminate()

    print(f"\n{'run':<36}{'requests':>9}{'failed':>8}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, r in results.items():
        print(f"{name:<36}{r['requests']:>9}{r['failures']:>8}{r['rps']:>9.0f}"
              f"{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}")
    for kind in ("plain", "stream"):
        base = results.get(f"direct upstream {kind} c=1")
        for router in (spec.partition("=")[0] for spec in args.routers.split(",")):
            routed = results.get(f"{router} {kind} c=1")
            if base and routed:
                added = routed["p50_ms"] - base["p50_ms"]
                print(f"added latency p50, {router} {kind}: {added:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
