"""Routing speed benchmark: per router, card load time, single-prompt latency and batch
throughput, with the prompt embedding included (fresh texts, never cache hits) and without it.

    python bench/routing.py ROUTER [ROUTER ...] [--calls 200] [--batch 500] [--threads 1]

ROUTER is a router name (random, mf, ...) or a router card directory. Prompts are real chat
prompts from the shipped data (Arena-Hard, MT-Bench, LLMRouter). Embeddings computed here go to
a temporary cache that is deleted afterwards, so the shared cache is not touched.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path


def _threads_from_argv() -> str | None:
    """--threads must act before numpy and torch start their thread pools."""
    for i, arg in enumerate(sys.argv):
        if arg == "--threads" and i + 1 < len(sys.argv):
            return sys.argv[i + 1]
        if arg.startswith("--threads="):
            return arg.split("=", 1)[1]
    return None


if (_threads := _threads_from_argv()) is not None:
    for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = _threads

import numpy as np  # noqa: E402

# run from a checkout: import this checkout's switchllm, not an installed one
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def chat_prompts(limit: int) -> list[str]:
    """Real user prompts from the shipped sets (MT-Bench turn 1, Arena-Hard, LLMRouter's test
    questions; median about 200 characters), shuffled with a fixed seed."""
    from switchllm.data.benchmarks import load_benchmark

    prompts = [p for name in ("mt-bench", "arena-hard", "llmrouter")
               for p in load_benchmark(name).prompts]
    order = np.random.default_rng(0).permutation(len(prompts))
    prompts = [prompts[i] for i in order]
    if len(prompts) < limit:
        raise SystemExit(f"only {len(prompts)} shipped chat prompts; use --batch {len(prompts)}")
    return prompts[:limit]


def bench_router(spec: str, prompts: list[str], calls: int, run_id: str) -> dict[str, object]:
    from switchllm.routers import load_router
    from switchllm.routers.embedding_router import EmbeddingRouter

    start = time.perf_counter()
    router = load_router(spec)
    load_s = time.perf_counter() - start
    short = [p for p in prompts if len(p) < 300] or prompts
    router.win_rate([f"warm-up {run_id} {spec}"])  # loads the embedding model, once
    latencies = []
    for i in range(calls):
        text = f"{short[i % len(short)]} [{run_id} {spec} {i}]"  # fresh: never a cache hit
        t0 = time.perf_counter()
        router.win_rate([text])
        latencies.append(time.perf_counter() - t0)
    batch = [f"{p} [{run_id} {spec} batch]" for p in prompts]
    t0 = time.perf_counter()
    router.win_rate(batch)
    batch_s = time.perf_counter() - t0
    row: dict[str, object] = {
        "router": spec, "load_ms": load_s * 1e3,
        "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
        "batch_per_s": len(batch) / batch_s,
    }
    if isinstance(router, EmbeddingRouter):
        vectors = router.embed(batch)  # cached by now: time the router alone
        one = []
        for i in range(calls):
            t0 = time.perf_counter()
            router.win_rate_from_embeddings(vectors[i % len(vectors)][None])
            one.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        router.win_rate_from_embeddings(vectors)
        row["router_only_p50_ms"] = float(np.percentile(one, 50)) * 1e3
        row["router_only_per_s"] = len(vectors) / (time.perf_counter() - t0)
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("routers", nargs="+", help="router names or card directories")
    parser.add_argument("--calls", type=int, default=200, help="single-prompt calls")
    parser.add_argument("--batch", type=int, default=500, help="prompts in the batch")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for numpy and torch (default: their own choice; "
                             "1 is far faster on a busy machine)")
    args = parser.parse_args()
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    prompts = chat_prompts(args.batch)
    with tempfile.TemporaryDirectory(prefix="switchllm-bench-") as cache:
        os.environ["SWITCHLLM_CACHE_DIR"] = cache  # read when the embedder is first built
        run_id = str(time.time_ns())
        rows = [bench_router(spec, prompts, args.calls, run_id) for spec in args.routers]
    columns = [("router", "router", "{}"), ("load_ms", "load ms", "{:.0f}"),
               ("p50_ms", "p50 ms", "{:.1f}"), ("p99_ms", "p99 ms", "{:.1f}"),
               ("batch_per_s", "batch /s", "{:.0f}"),
               ("router_only_p50_ms", "router-only p50 ms", "{:.2f}"),
               ("router_only_per_s", "router-only batch /s", "{:.0f}")]
    table = [[title for _, title, _ in columns]]
    for row in rows:
        table.append([fmt.format(row[key]) if key in row else "-" for key, _, fmt in columns])
    widths = [max(len(r[i]) for r in table) for i in range(len(columns))]
    for line in table:
        print("  ".join(cell.rjust(w) if i else cell.ljust(w)
                        for i, (cell, w) in enumerate(zip(line, widths, strict=True))))
    print(f"({args.calls} single calls, batch of {len(prompts)} chat prompts, "
          f"{os.cpu_count()} CPUs, threads {args.threads or 'default'}, load average "
          f"{os.getloadavg()[0]:.1f}; embedding included except in router-only columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
