"""Benchmark `switchllm label`: prompts labelled per second against loopback upstreams.

Two candidate models and a pairwise judge (4 calls per prompt: 2 answers, 2 judge orders) run
in a separate process on a fast local OpenAI-compatible server (tests/serving_fixtures.py's
FakeUpstream); `switchllm label` runs here at --concurrency 32. Measured: a cold run (every call
made, every answer and verdict written to the cache) with upstreams that answer at once (the
tool is the bottleneck) and with a fixed upstream latency, then a warm rerun (all from the
cache).

    python bench/labelling.py                  # 2,000 prompts, 0 and 50 ms upstream latency
    python bench/labelling.py --prompts 5000 --latency-ms 0,200

The upstream and the labeller share this machine's cores: on a 2-core box the numbers are a
floor. Target: >= 50 prompts/s at concurrency 32.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.common import free_port, wait_port  # noqa: E402


def answer_strong(body: dict) -> str:
    return "Here is a careful, complete answer. " * 8


def answer_weak(body: dict) -> str:
    return "A short answer."


def verdict(body: dict) -> str:
    text = body["messages"][-1]["content"]
    a = text.split("[The Start of Assistant A's Answer]\n", 1)[1]
    return "A is more complete. [[A]]" if a.startswith("Here is") else "B is better. [[B]]"


def run_upstream(port: int, latency_s: float) -> None:
    from tests.serving_fixtures import FakeUpstream

    async def main() -> None:
        upstream = FakeUpstream(record=False)
        for model, hook in (("strong", answer_strong), ("weak", answer_weak),
                            ("judge", verdict)):
            upstream.behaviour(model).respond = hook
            upstream.behaviour(model).delay_s = latency_s
        await upstream.serve(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def label_once(workdir: Path, config: Path, prompts: Path, concurrency: int) -> float:
    from switchllm.cli import main

    started = time.perf_counter()
    code = main(["label", str(prompts), "--config", str(config), "--models", "strong,weak",
                 "--judge", "judge", "--output", str(workdir / "battles.jsonl"), "--quiet",
                 "--concurrency", str(concurrency)])
    elapsed = time.perf_counter() - started
    if code != 0:
        raise SystemExit(f"switchllm label exited with {code}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--latency-ms", default="0,50",
                        help="upstream latencies to measure at, comma separated")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args()
    results = []
    for latency_ms in [float(v) for v in args.latency_ms.split(",")]:
        port = free_port()
        upstream = mp.get_context("spawn").Process(target=run_upstream,
                                                   args=(port, latency_ms / 1000), daemon=True)
        upstream.start()
        try:
            wait_port(port)
            with tempfile.TemporaryDirectory() as tmp:
                workdir = Path(tmp)
                config = workdir / "serving.yaml"
                config.write_text(json.dumps({"models": {
                    name: {"base_url": f"http://127.0.0.1:{port}/v1", "input_price": 0.5,
                           "output_price": 1.5} for name in ("strong", "weak", "judge")}}))
                prompts = workdir / "prompts.jsonl"
                prompts.write_text("".join(
                    json.dumps({"prompt": f"Question {i}: explain topic {i % 37} in "
                                f"{i % 9 + 2} sentences."}) + "\n"
                    for i in range(args.prompts)))
                cold = label_once(workdir, config, prompts, args.concurrency)
                warm = label_once(workdir, config, prompts, args.concurrency)
                rows = len((workdir / "battles.jsonl").read_text().splitlines())
        finally:
            upstream.terminate()
            upstream.join(5)
        result = {"latency_ms": latency_ms, "prompts": args.prompts, "rows": rows,
                  "concurrency": args.concurrency, "calls": 4 * args.prompts,
                  "cold_prompts_per_s": args.prompts / cold,
                  "cold_calls_per_s": 4 * args.prompts / cold,
                  "cached_prompts_per_s": args.prompts / warm}
        results.append(result)
        print(f"upstream latency {latency_ms:5.0f} ms: cold {result['cold_prompts_per_s']:7.1f} "
              f"prompts/s ({result['cold_calls_per_s']:.0f} calls/s), from the cache "
              f"{result['cached_prompts_per_s']:7.1f} prompts/s  ({args.prompts} prompts, "
              f"concurrency {args.concurrency})", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
