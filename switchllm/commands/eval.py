"""`switchllm eval`: evaluate routers on the shipped benchmarks.

Writes `DIR/<benchmark>.json` (metrics, curves, references) and `DIR/<benchmark>.png` (plus
`DIR/<benchmark>_cost.png` for benchmarks with dollar costs) and prints a table per benchmark.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

from switchllm.errors import SwitchLLMError

DEFAULT_OUTPUT = "switchllm-eval"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--benchmark", default="mmlu",
                        help="benchmark name, comma-separated names, or 'all' (default: mmlu)")
    parser.add_argument("--routers", nargs="+", default=["random"], metavar="ROUTER",
                        help="router names or card directories, comma- or space-separated; "
                             "'all' = every router usable without training (default: random)")
    parser.add_argument("--output", default=DEFAULT_OUTPUT, metavar="DIR",
                        help=f"directory for JSON and PNG results (default: {DEFAULT_OUTPUT})")
    parser.add_argument("--strong-model", default=None,
                        help="strong model (default: gpt-4-1106-preview)")
    parser.add_argument("--weak-model", default=None,
                        help="weak model (default: mistralai/Mixtral-8x7B-Instruct-v0.1)")
    honest = parser.add_mutually_exclusive_group()
    honest.add_argument("--cv", type=int, default=None, metavar="K",
                        help="K-fold cross-validation by prompt: retrain each router kind on the "
                             "other folds of the benchmark")
    honest.add_argument("--leave-out", action="store_true",
                        help="retrain each router kind on the shipped training sets minus the "
                             "benchmark (and sets sharing its prompts, and MT-Bench)")
    parser.add_argument("--seed", type=int, default=0, help="seed for random and CV folds")
    parser.add_argument("--batch-size", type=int, default=256, help="prompts per router call")
    routellm = parser.add_argument_group("RouteLLM's flags (its command lines run unchanged)")
    routellm.add_argument("--config", default=None, help="RouteLLM router config YAML: a "
                          "router section whose checkpoint_path is a local card directory uses "
                          "that card; others use the shipped card")
    routellm.add_argument("--random-iters", type=int, default=10, metavar="N",
                          help="seeds averaged for the random router reference (default 10)")
    routellm.add_argument("--parallel", type=int, default=None, metavar="N",
                          help="CPU threads for router compute (default: torch's choice)")
    routellm.add_argument("--overwrite-cache", nargs="*", default=[], metavar="ROUTER",
                          help="accepted; switchllm caches no results (win rates are "
                          "recomputed every run, only embeddings are cached)")
    routellm.add_argument("--num-results", type=int, default=None, metavar="N",
                          help="accepted; curves and metrics use every threshold on a fixed "
                          "quantile grid, not N sampled thresholds")


def _split(values: list[str]) -> list[str]:
    return [part for value in values for part in value.split(",") if part.strip()]


def _benchmarks(spec: str) -> list[str]:
    from switchllm.data.benchmarks import BENCHMARKS

    names = BENCHMARKS if spec.strip() == "all" else _split([spec])
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        raise SwitchLLMError(f"unknown benchmark {(unknown or [spec])[0]!r}; known benchmarks: "
                             f"{', '.join(BENCHMARKS)}, all")
    return list(dict.fromkeys(names))


def _routers(values: list[str], retrain: bool) -> list[str]:
    from switchllm.routers import ROUTER_KINDS, available_routers, load_router

    names = _split(values)
    if names == ["all"]:
        return available_routers()
    for name in names:  # fail before any work on a name that is neither a router nor a card
        # retraining (--cv, --leave-out) needs a kind, not a shipped card
        if name != "random" and not (retrain and name in ROUTER_KINDS):
            load_router(name)
    if not names:
        raise SwitchLLMError("no router given to --routers")
    return list(dict.fromkeys(names))


def _with_config(values: list[str], config: str | None) -> list[str]:
    """Router specs after RouteLLM's per-router config (`mf: {checkpoint_path: DIR}`)."""
    if not config:
        return values
    from switchllm.serving import load_yaml, routers_from

    return list(routers_from(_split(values), load_yaml(config)).values())


def _output_dir(path: str) -> Path:
    output = Path(path)
    try:
        output.mkdir(parents=True, exist_ok=True)
        probe = output / ".switchllm-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise SwitchLLMError(f"cannot write to output directory {output}: "
                             f"{exc.strerror or exc}") from None
    return output


def _fmt(value: float, digits: int = 3, suffix: str = "") -> str:
    return "n/a" if value is None or math.isnan(value) else f"{value:.{digits}f}{suffix}"


def _print_table(results: dict) -> None:
    pair = results["pair"]
    print(f"\n{results['benchmark']}: {results['n_prompts']} prompts, strong {pair['strong']}, "
          f"weak {pair['weak']}, mode {results['mode']}")
    if results.get("pair_note"):
        print(f"  note: {results['pair_note']}")
    refs = results["references"]
    print(f"  {results['quality_label']}: strong {refs['strong']['quality']:.2f}, "
          f"weak {refs['weak']['quality']:.2f}")
    rows = [(name, e) for name, e in results["routers"].items()]
    rows += [(f"[random x{refs['random']['seeds']} seeds]", refs["random"]),
             ("[oracle]", refs["oracle"])]
    width = max(24, *(len(name) for name, _ in rows))
    print(f"  {'router':<{width}}  {'APGR':>7}  {'CPT(50%)':>9}  {'CPT(80%)':>9}  {'AUC':>9}")
    for name, e in rows:
        print(f"  {name:<{width}}  {_fmt(e['apgr']):>7}  {_fmt(e['cpt50'], 1, '%'):>9}  "
              f"{_fmt(e['cpt80'], 1, '%'):>9}  {_fmt(e['auc'], 3):>9}")
    for name, reason in results["skipped"].items():
        print(f"  skipped {name}: {reason}")


def run(args: argparse.Namespace) -> int:
    from switchllm.data.benchmarks import load_benchmark
    from switchllm.evaluation.runner import EvalSettings, choose_pair, evaluate, write_results

    benchmarks = _benchmarks(args.benchmark)
    routers = _routers(_with_config(args.routers, args.config),
                       retrain=args.cv is not None or args.leave_out)
    if args.random_iters < 1:
        raise SwitchLLMError(f"--random-iters must be positive, got {args.random_iters}")
    if args.parallel is not None:
        if args.parallel < 1:
            raise SwitchLLMError(f"--parallel must be positive, got {args.parallel}")
        import torch

        torch.set_num_threads(args.parallel)
    if args.cv is not None and args.cv < 2:
        raise SwitchLLMError(f"--cv needs at least 2 folds, got {args.cv}")
    if args.batch_size < 1:
        raise SwitchLLMError(f"--batch-size must be positive, got {args.batch_size}")
    mode = "cv" if args.cv is not None else "leave-out" if args.leave_out else "plain"
    settings = EvalSettings(mode=mode, cv_folds=args.cv or 5, seed=args.seed,
                            batch_size=args.batch_size, random_iters=args.random_iters)
    output = _output_dir(args.output)
    # Several benchmarks: one lacking the pair falls back to its own default pair (with a note).
    fallback = len(benchmarks) > 1
    pairs = {}
    for name in benchmarks:  # check every pair before the (slow) evaluation starts
        pairs[name] = choose_pair(load_benchmark(name), args.strong_model, args.weak_model,
                                  fallback)
    started = time.perf_counter()
    for name in benchmarks:
        strong, weak, note = pairs[name]
        results = evaluate(load_benchmark(name), routers, strong, weak, settings, note)
        if not results["routers"]:
            print(f"\n{name}: skipped, no router can score {strong} vs {weak}: "
                  + "; ".join(results["skipped"].values()))
            continue
        paths = write_results(results, output)
        _print_table(results)
        print(f"  wrote {', '.join(str(p) for p in paths)}")
    print(f"\ndone in {time.perf_counter() - started:.1f}s")
    return 0
