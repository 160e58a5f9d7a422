"""Benchmark `switchllm serve` against a fast local OpenAI-compatible upstream.

Measures (1) the latency the server adds over calling the upstream directly, at concurrency 1,
(2) requests per second at 64 concurrent clients, streaming and not, for the random router and
(if a card is available) mf, and optionally (3) a run in which the strong upstream answers HTTP
500 to 20% of calls, counting failed requests (fallback should absorb them all).

    python bench/server.py                     # quick: 5 s per throughput run
    python bench/server.py --duration 10 --fail-duration 60
    python bench/server.py --parts --repeats 3 # the parts comparison (issue 7), random router

`--parts` measures, in one run and against one upstream, the shipped server against the same
handlers built from other parts (bench/server_parts.py: Starlette, FastAPI, aiohttp's client,
pydantic request checks, uvicorn without uvloop/httptools), in rounds that take every variant in
turn (so load from elsewhere on the machine falls on all of them alike), and prints the medians,
each variant's cost against its hand-written counterpart and the verdict of the issue's rule
(a well-kept part is taken when it costs <= 0.3 ms p50 at c=1 and <= 10% req/s at c=64).

The upstream, the server and the load generator run as three processes on this machine, so on a
2-core box they compete for CPU: the numbers are a floor, not a ceiling.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_port  # noqa: E402

MESSAGES = [{"role": "user", "content": "Explain the difference between TCP and UDP briefly."}]
TOPICS = ["TCP and UDP", "a list and a tuple", "RAM and disk", "HTTP/1.1 and HTTP/2",
          "a mutex and a semaphore", "sorting and hashing", "Paris and Rome", "mitosis"]


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


# ---- --parts: the shipped server against the same handlers on other parts -----------------
# (well-kept part, what it is compared with). "raw" is the shipped server: uvicorn with uvloop
# + httptools (uvicorn[standard]), Starlette's router, pydantic checks, http_pool.
COMPARISONS = [("raw", "asyncio+h11"), ("asyncio+httptools", "asyncio+h11"),
               ("uvloop+h11", "asyncio+h11"), ("raw", "hand-dispatch"), ("raw", "hand-checks"),
               ("raw", "random-on-thread"),
               ("starlette-asgi", "raw"), ("starlette", "raw"), ("fastapi", "raw"),
               ("aiohttp", "raw")]
MAX_ADDED_P50_MS = 0.3
MAX_RPS_LOSS = 0.10


def start_variant(variant: str, port: int, upstream_port: int, log: str) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "SWITCHLLM_CACHE_DIR": str(Path(log).parent / "cache")}
    command = [sys.executable, str(ROOT / "bench" / "server_parts.py"), "--variant", variant,
               "--port", str(port), "--upstream-port", str(upstream_port), "--log", log]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    wait_port(port, process)
    return process


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process `pid`, all its threads (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_parts(args: argparse.Namespace) -> int:
    from bench.server_parts import VARIANTS, installed

    variants = args.variants.split(",") if args.variants else list(VARIANTS)
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    for variant in [v for v in variants if not installed(v)]:
        print(f"{variant}: skipped (not installed: pip install 'switchllm[bench]')")
        variants.remove(variant)
    up_port = free_port()
    upstream = mp.get_context("spawn").Process(target=run_upstream, args=(up_port, 0.0),
                                               daemon=True)
    upstream.start()
    wait_port(up_port)
    from bench.server_parts import micro

    # in-process CPU per request for each part (best of 5): steady on a busy machine
    micro_results = micro(up_port, args.micro_requests, 5)
    print_micro(micro_results)
    if args.micro_only:
        upstream.terminate()
        if args.json:
            Path(args.json).write_text(json.dumps({"micro": micro_results}, indent=1))
        return 0
    tmp = tempfile.mkdtemp(prefix="switchllm-bench-parts-")
    # rounds[r][name] = {"p50_ms": ..., "rps": ...}
    rounds: list[dict[str, dict[str, float]]] = []
    try:
        for r in range(args.repeats):
            results: dict[str, dict[str, float]] = {}
            c1 = measure(up_port, "strong", False, 1, 30, args.latency_requests)
            cn = measure(up_port, "strong", False, args.clients, args.duration)
            results["direct upstream"] = {"p50_ms": c1["p50_ms"], "rps": cn["rps"],
                                          "failures": c1["failures"] + cn["failures"]}
            for variant in variants:
                port = free_port()
                server = start_variant(variant, port, up_port, f"{tmp}/{variant}-{r}.sqlite")
                try:
                    c1 = measure(port, "router-random-0.5", False, 1, 30, args.latency_requests)
                    # CPU the server spends per request: unlike req/s, it hardly depends on
                    # what else runs on the machine
                    cpu_before = cpu_seconds(server.pid)
                    cn = measure(port, "router-random-0.5", False, args.clients, args.duration)
                    cpu_us = (cpu_seconds(server.pid) - cpu_before) * 1e6
                finally:
                    server.terminate()
                    server.wait()
                # the warm-up's 200 requests ran inside the CPU window too
                results[variant] = {"p50_ms": c1["p50_ms"], "rps": cn["rps"],
                                    "cpu_us": cpu_us / (cn["requests"] + 200),
                                    "failures": c1["failures"] + cn["failures"]}
                print(f"round {r + 1}/{args.repeats} {variant:<18} p50 {c1['p50_ms']:.3f} ms  "
                      f"{cn['rps']:.0f} req/s  {results[variant]['cpu_us']:.0f} CPU us/req  "
                      f"failed {results[variant]['failures']}", flush=True)
            rounds.append(results)
    finally:
        upstream.terminate()
    summary = summarise_parts(rounds, variants, args.clients)
    if args.json:
        Path(args.json).write_text(json.dumps(
            {"micro": micro_results, "rounds": rounds, "summary": summary}, indent=1))
    return 0


def print_micro(results: dict[str, dict[str, float]]) -> None:
    print("\nCPU us per request in one process, best of 5 (what each part costs):")
    for group, rows in results.items():
        base = next(iter(rows.values()))
        for name, us in rows.items():
            print(f"  {group:<10}{name:<18}{us:>8.1f} us  ({us - base:+.1f} us against the first)")


def summarise_parts(rounds: list[dict[str, dict[str, float]]], variants: list[str],
                    clients: int) -> dict[str, dict[str, float | str]]:
    """Medians over rounds; each comparison is the median of per-round differences (both
    measured minutes apart, under the same load)."""
    def med(name: str, key: str) -> float:
        return statistics.median(r[name][key] for r in rounds)

    summary: dict[str, dict[str, float | str]] = {}
    print(f"\n{len(rounds)} rounds, medians; random router, non-streamed, c=1 and c={clients}")
    print(f"{'variant':<18}{'p50 ms':>8}{'added':>8}{'req/s':>8}{'/direct':>8}{'CPU us':>8}"
          f"{'failed':>7}")
    for name in ["direct upstream", *variants]:
        row: dict[str, float | str] = {
            "p50_ms": med(name, "p50_ms"), "rps": med(name, "rps"),
            "failures": sum(r[name]["failures"] for r in rounds)}
        line = f"{name:<18}{row['p50_ms']:>8.3f}"
        if name == "direct upstream":
            line += f"{'':>8}{row['rps']:>8.0f}{'':>16}"
        else:
            row["added_p50_ms"] = statistics.median(
                r[name]["p50_ms"] - r["direct upstream"]["p50_ms"] for r in rounds)
            row["rps_vs_direct"] = statistics.median(
                r[name]["rps"] / r["direct upstream"]["rps"] for r in rounds)
            row["cpu_us"] = med(name, "cpu_us")
            line += (f"{row['added_p50_ms']:>8.3f}{row['rps']:>8.0f}{row['rps_vs_direct']:>8.2f}"
                     f"{row['cpu_us']:>8.0f}")
        summary[name] = row
        print(line + f"{row['failures']:>7}")
    print(f"\n{'part':<18}{'against':<16}{'d p50 ms':>9}{'d req/s':>9}{'d CPU':>7}  verdict")
    for part, base in COMPARISONS:
        if part not in variants or base not in variants:
            continue
        cost = statistics.median(r[part]["p50_ms"] - r[base]["p50_ms"] for r in rounds)
        rps = statistics.median(r[part]["rps"] / r[base]["rps"] - 1 for r in rounds)
        cpu = statistics.median(r[part]["cpu_us"] / r[base]["cpu_us"] - 1 for r in rounds)
        verdict = "passes" if cost <= MAX_ADDED_P50_MS and rps >= -MAX_RPS_LOSS else "fails"
        failed = summary[part]["failures"] or summary[base]["failures"]
        if failed:
            verdict = "invalid (requests failed)"
        summary[f"{part} vs {base}"] = {"cost_p50_ms": cost, "rps_change": rps,
                                        "cpu_change": cpu, "verdict": verdict}
        print(f"{part:<18}{base:<16}{cost:>+9.3f}{rps:>+9.1%}{cpu:>+7.0%}  {verdict}")
    return summary


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
    parser.add_argument("--parts", action="store_true",
                        help="compare the server's parts (bench/server_parts.py), random router")
    parser.add_argument("--variants", default="",
                        help="with --parts: comma-separated variants (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="with --parts: rounds over every variant (medians are reported)")
    parser.add_argument("--json", default="", help="with --parts: write the numbers here")
    parser.add_argument("--micro-requests", type=int, default=5000,
                        help="with --parts: requests per in-process CPU measurement")
    parser.add_argument("--micro-only", action="store_true",
                        help="with --parts: only the in-process CPU measurements")
    args = parser.parse_args()
    if args.parts:
        return run_parts(args)
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
