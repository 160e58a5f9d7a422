"""Throughput of `switchllm serve --workers N` against one process, measured in the same run.

For each router (random, mf) it starts the server with 1 worker and with N, alternating the
order on every repeat so that load on a shared machine drifts evenly over both, and sends
non-streamed chat requests from 64 keep-alive clients (bench/loadgen.py), each with a prompt
no earlier request sent (so the mf router embeds every prompt: "new prompts"). It prints req/s
per run, the CPU each part used per request and the CPU other processes on the host used
meanwhile, then the median per worker count and the ratio of the medians.

    python bench/workers.py                          # random and mf, 1 vs 2 workers, 3 repeats
    python bench/workers.py --routers mf --workers 4 --duration 20
    python bench/workers.py --ray                    # and `serve --ray` (a local Ray instance)

The upstream (bench/server.py's fast loopback server), the switchllm server and the load
generator share this machine's cores, so the ratio is a floor: on a 2-core host the upstream
and the load generator take CPU the workers would otherwise use.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))  # importable by name: the upstream runs in a spawned child
import server as bench_server  # noqa: E402 - bench/server.py: the upstream, prompts
from loadgen import run_load  # noqa: E402


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of `pid` and all its descendants so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            fields = Path(f"/proc/{current}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / tick
            for task in Path(f"/proc/{current}/task").iterdir():
                children = (task / "children").read_text().split()
                pending.extend(int(c) for c in children)
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
    return total


def cpu_use(server_pid: int, upstream_pid: int) -> dict[str, float]:
    """CPU seconds so far of the server (all its processes), the upstream, this load
    generator, and every other process on the host (others' work on a shared machine)."""
    ours = {"server": cpu_seconds(server_pid), "upstream": cpu_seconds(upstream_pid),
            "load": sum(resource.getrusage(resource.RUSAGE_SELF)[:2])}
    fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    busy = sum(int(f) for i, f in enumerate(fields[:8]) if i not in (3, 4))  # not idle/iowait
    total = busy / os.sysconf("SC_CLK_TCK")
    return {**ours, "others": total - sum(ours.values()), "wall": time.perf_counter()}


def start(workers: int, upstream_port: int, router: str, tmp: str,
          extra: list[str]) -> tuple[subprocess.Popen, int]:
    """`switchllm serve` with `workers` processes, once every worker has started."""
    port = bench_server.free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT), "SWITCHLLM_CACHE_DIR": f"{tmp}/cache"}
    command = [
        sys.executable, "-m", "switchllm", "serve", "--routers", router,
        "--strong-model", "strong", "--weak-model", "weak",
        "--base-url", f"http://127.0.0.1:{upstream_port}/v1", "--port", str(port),
        "--log", f"{tmp}/{router}-{workers}-{time.time_ns()}.sqlite", "--workers", str(workers),
        *extra,
    ]
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    if workers > 1:
        ready = threading.Event()

        def read() -> None:
            assert process.stdout is not None
            for line in process.stdout:
                if re.search(r"\d+ workers ready", line):
                    ready.set()

        threading.Thread(target=read, daemon=True).start()
        deadline = time.time() + 300
        while not ready.wait(0.2):
            if process.poll() is not None or time.time() > deadline:
                raise SystemExit(f"{workers} workers did not start")
    bench_server.wait_port(port, process, timeout=300)
    return process, port


def start_ray(upstream_port: int, routers: list[str], tmp: str, router_replicas: int
              ) -> tuple[subprocess.Popen, int]:
    """`switchllm serve --ray` on a new local Ray instance: one ingress replica and
    `router_replicas` router replicas, half a CPU each (Ray counts 2 CPUs on a 2-core host)."""
    port = bench_server.free_port()
    config = Path(tmp) / "ray.yaml"
    base = f"http://127.0.0.1:{upstream_port}/v1"
    config.write_text(
        f"strong_model: strong\nweak_model: weak\nmodels:\n  strong: {{base_url: '{base}'}}\n"
        f"  weak: {{base_url: '{base}'}}\nrouters: [{', '.join(routers)}]\nray:\n"
        f"  router: {{num_replicas: {router_replicas}, ray_actor_options: {{num_cpus: 0.5}}}}\n"
        "  ingress: {num_replicas: 1, ray_actor_options: {num_cpus: 0.5}}\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT), "SWITCHLLM_CACHE_DIR": f"{tmp}/cache"}
    process = subprocess.Popen(
        [sys.executable, "-m", "switchllm", "serve", "--ray", "--config", str(config),
         "--port", str(port), "--log", f"{tmp}/ray-{time.time_ns()}.sqlite"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
    ready = threading.Event()

    def read() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            if "Ray Serve application" in line and "ready" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + 600
    while not ready.wait(0.5):
        if process.poll() is not None or time.time() > deadline:
            raise SystemExit("the Ray Serve application did not start")
    return process, port


_RUNS = [0]


def measure(port: int, model: str, clients: int, duration: float) -> dict:
    """A 1-second warm-up, then the timed run; every request with a prompt no earlier one
    sent (each run draws from its own block of prompt numbers)."""
    _RUNS[0] += 1
    base = _RUNS[0] * 10_000_000

    def make(offset: int) -> Callable[[int], bytes]:
        return lambda i: bench_server.request_bytes(port, model, False, offset + i)

    warm = run_load(port, make(base), clients, 1.0)
    result = run_load(port, make(base + 5_000_000), clients, duration)
    result["all_requests"] = warm["requests"] + result["requests"]
    return result


def measure_with_cpu(port: int, model: str, clients: int, duration: float, server_pid: int,
                     upstream_pid: int) -> dict:
    """`measure`, plus the CPU the server and the upstream spent per request (`cpu_ms`) and the
    cores other work on the host used meanwhile (`others_cores`)."""
    before = cpu_use(server_pid, upstream_pid)
    result = measure(port, model, clients, duration)
    used = {k: v - before[k] for k, v in cpu_use(server_pid, upstream_pid).items()}
    result["others_cores"] = used.pop("others") / used.pop("wall")
    result["cpu_ms"] = {k: 1000 * v / result["all_requests"] for k, v in used.items()}
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--routers", default="random,mf")
    parser.add_argument("--workers", type=int, default=2, help="worker count compared with 1")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ray", action="store_true",
                        help="also measure `serve --ray` (one local Ray instance, started once)")
    parser.add_argument("--ray-router-replicas", type=int, default=1)
    parser.add_argument("--server-arg", action="append", default=[],
                        help="extra `switchllm serve` argument, repeatable")
    args = parser.parse_args()

    up_port = bench_server.free_port()
    upstream = mp.get_context("spawn").Process(target=bench_server.run_upstream,
                                               args=(up_port, 0.0), daemon=True)
    upstream.start()
    bench_server.wait_port(up_port)
    tmp = tempfile.mkdtemp(prefix="switchllm-bench-workers-")
    rows: list[tuple[str, int, int, dict]] = []
    try:
        for router in args.routers.split(","):
            name = router.partition("=")[0]
            if name == "mf" and (reason := bench_server.mf_available()):
                print(f"mf: skipped ({reason})")
                continue
            for repeat in range(args.repeats):
                order = (1, args.workers) if repeat % 2 == 0 else (args.workers, 1)
                for workers in order:
                    process, port = start(workers, up_port, router, tmp, args.server_arg)
                    try:
                        result = measure_with_cpu(port, f"router-{name}-0.5", args.clients,
                                                  args.duration, process.pid, upstream.pid)
                    finally:
                        process.terminate()
                        process.wait(60)
                    rows.append((name, workers, repeat, result))
                    print(f"{name:<8} workers={workers} repeat={repeat} "
                          f"{result['rps']:8.0f} req/s  p50 {result['p50_ms']:7.2f} ms  "
                          f"p99 {result['p99_ms']:7.2f} ms  failed {result['failures']}  "
                          "CPU ms/request: " + ", ".join(
                              f"{k} {v:.2f}" for k, v in result["cpu_ms"].items())
                          + f"; other work on the host: {result['others_cores']:.2f} cores",
                          flush=True)
        names = list(dict.fromkeys(r[0] for r in rows))
        if args.ray and names:
            process, port = start_ray(up_port, [r for r in args.routers.split(",")
                                                if r.partition("=")[0] in names],
                                      tmp, args.ray_router_replicas)
            try:
                for repeat in range(args.repeats):
                    for name in names:
                        result = measure_with_cpu(port, f"router-{name}-0.5", args.clients,
                                                  args.duration, process.pid, upstream.pid)
                        rows.append((name, 0, repeat, result))
                        print(f"{name:<8} ray serve repeat={repeat} {result['rps']:8.0f} req/s  "
                              f"p50 {result['p50_ms']:7.2f} ms  p99 {result['p99_ms']:7.2f} ms  "
                              f"failed {result['failures']}; other work on the host: "
                              f"{result['others_cores']:.2f} cores", flush=True)
            finally:
                process.terminate()
                process.wait(120)
    finally:
        upstream.terminate()
        shutil.rmtree(tmp, ignore_errors=True)

    print(f"\nnon-streamed chat, c={args.clients}, {args.duration:g} s per run, "
          f"{args.repeats} repeats, {os.cpu_count()} cores")
    print(f"{'router':<8}{'1 worker req/s':>16}{f'{args.workers} workers req/s':>18}"
          f"{'ratio':>8}{'failed':>8}")
    for name in dict.fromkeys(r[0] for r in rows):
        one = statistics.median(r[3]["rps"] for r in rows if r[0] == name and r[1] == 1)
        many = statistics.median(r[3]["rps"] for r in rows
                                 if r[0] == name and r[1] == args.workers)  # 0: Ray Serve
        failed = sum(r[3]["failures"] for r in rows if r[0] == name and r[1] != 0)
        print(f"{name:<8}{one:>16.0f}{many:>18.0f}{many / one:>8.2f}{failed:>8}")
        on_ray = [r[3]["rps"] for r in rows if r[0] == name and r[1] == 0]
        if on_ray:
            ray_rps = statistics.median(on_ray)
            print(f"{'':<8}Ray Serve ({args.ray_router_replicas} router replicas): "
                  f"{ray_rps:.0f} req/s, {ray_rps / one:.2f}x one worker")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
