"""`switchllm eval`: evaluate routers on the shipped benchmarks or on your own data
(`--data FILE`: battles, scores or labels), and draw learning curves (`--train-sizes`).

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
    parser.add_argument("--benchmark", default=None,
                        help="benchmark name, comma-separated names, or 'all' (default: mmlu; "
                             "with --n-models: routerbench)")
    parser.add_argument("--data", default=None, metavar="FILE",
                        help="evaluate on your own data file (battles, scores or labels; "
                             "see docs/TRAINING.md) instead of --benchmark")
    parser.add_argument("--format", default="auto", choices=("auto", "battles", "scores",
                                                              "labels"),
                        help="data format of --data (default: detected)")
    parser.add_argument("--train-sizes", default=None, metavar="N,N,...",
                        help="learning curve: held-out APGR of each router kind trained on N "
                             "labelled prompts, alone and with the shipped sets")
    parser.add_argument("--test-fraction", type=float, default=0.3,
                        help="--train-sizes: share of prompts in the fixed test split")
    parser.add_argument("--weight", type=float, default=None,
                        help="--train-sizes: share of the training weight of your labels "
                             "next to the shipped sets (default: train --with-shipped's)")
    parser.add_argument("--samples", type=int, default=1,
                        help="--train-sizes: training samples per size, averaged (default 1)")
    parser.add_argument("--routers", nargs="+", default=None, metavar="ROUTER",
                        help="router names or card directories, comma- or space-separated; "
                             "'all' = every router usable without training (default: random; "
                             "with --n-models: router kinds, default random,knn,mf)")
    parser.add_argument("--n-models", action="store_true",
                        help="choose among every model of the benchmark (routerbench, "
                             "llmrouter): sweep willingness to pay, compare with each single "
                             "model, the Zero-router hull and the oracle. Routers are trained "
                             "on the train split and measured on the test split, or with --cv "
                             "K cross-validated on the test split")
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
    marked = False
    for name, e in rows:
        if e.get("in_sample"):
            name, marked = f"{name} *", True
        print(f"  {name:<{width}}  {_fmt(e['apgr']):>7}  {_fmt(e['cpt50'], 1, '%'):>9}  "
              f"{_fmt(e['cpt80'], 1, '%'):>9}  {_fmt(e['auc'], 3):>9}")
    if marked:
        print("  * in-sample: the card was trained on this benchmark's prompts, so its numbers "
              "flatter it (use --cv or --leave-out)")
    for name, reason in results["skipped"].items():
        print(f"  skipped {name}: {reason}")


def _user_benchmark(args: argparse.Namespace):  # noqa: ANN202 - a Benchmark, imported lazily
    from switchllm.data.formats import load_training_data
    from switchllm.evaluation.own_data import benchmark_from_battles
    from switchllm.training import choose_default_pair

    loaded = load_training_data([args.data], args.format)
    info = loaded.files[0]
    print(f"read {info['path']}: {info['format']}, {info['rows']} rows -> {info['battles']} "
          f"battles")
    strong, weak = choose_default_pair(loaded.battles, args.strong_model, args.weak_model)
    return benchmark_from_battles(Path(args.data).stem, loaded.battles, strong, weak,
                                  f"{args.data} ({info['format']})")


def _sizes(text: str) -> list[int]:
    try:
        sizes = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise SwitchLLMError(f"--train-sizes takes comma-separated counts, got {text!r}"
                             ) from None
    if not sizes or min(sizes) < 1:
        raise SwitchLLMError(f"--train-sizes needs positive counts, got {text!r}")
    return sizes


def _learning_curve(args: argparse.Namespace, benchmark, strong: str, weak: str,  # noqa: ANN001
                    output: Path) -> None:
    import json

    from switchllm.data.benchmarks import BENCHMARKS, leave_out_exclusions
    from switchllm.data.own_data import DEFAULT_USER_WEIGHT
    from switchllm.evaluation.own_data import learning_curve, plot_learning_curve
    from switchllm.routers import ROUTER_KINDS

    kinds = _split(args.routers)
    bad = [k for k in kinds if k not in ROUTER_KINDS or k == "random"]
    if bad:
        raise SwitchLLMError(f"--train-sizes trains router kinds; {bad[0]!r} is not one "
                             f"(use e.g. --routers knn,mf)")
    battles = benchmark.extra.get("battles")
    if battles is None:
        battles = benchmark.to_battles()
    exclude = leave_out_exclusions(benchmark.name) if benchmark.name in BENCHMARKS else None
    weight = DEFAULT_USER_WEIGHT if args.weight is None else args.weight
    kwargs = {} if exclude is None else {"exclude": exclude}
    results = learning_curve(battles, kinds, _sizes(args.train_sizes), strong, weak,
                             test_fraction=args.test_fraction, split_seed=args.seed,
                             seeds=range(args.samples), weight=weight, **kwargs)
    results["benchmark"] = benchmark.name
    stem = output / f"{benchmark.name}_learning_curve"
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot_learning_curve(results, stem.with_suffix(".png"), benchmark.name)
    print(f"\n{benchmark.name} learning curve: held-out APGR on {results['test_prompts']} test "
          f"prompts, {strong} vs {weak} (random 0.5)")
    sizes = results["sizes"]
    print(f"  {'router':<28}" + "".join(f"{n:>8}" for n in sizes))
    for kind, entry in results["curves"].items():
        for mode in ("own", "with_shipped"):
            cells = [entry[mode][str(n)]["mean"] for n in sizes]
            label = f"{kind} ({'your labels' if mode == 'own' else '+ shipped sets'})"
            print(f"  {label:<28}" + "".join(f"{_fmt(c):>8}" for c in cells))
        print(f"  {kind + ' (shipped sets only)':<28}{_fmt(entry['shipped_only']['mean']):>8}")
    if results["sizes_too_large"]:
        print(f"  sizes above the {results['pool_prompts']} training prompts skipped: "
              f"{results['sizes_too_large']}")
    print(f"  wrote {stem.with_suffix('.json')}, {stem.with_suffix('.png')}")


def _n_models(args: argparse.Namespace) -> int:
    from switchllm.evaluation.n_model_eval import DEFAULT_KINDS, N_MODEL_BENCHMARKS
    from switchllm.evaluation.n_model_report import print_report, run_n_models

    if args.leave_out or args.data or args.train_sizes is not None:
        raise SwitchLLMError("--n-models trains on the benchmark's own train split (or with "
                             "--cv on folds of its test split): drop --leave-out, --data and "
                             "--train-sizes")
    spec = args.benchmark or "routerbench"
    names = list(N_MODEL_BENCHMARKS) if spec.strip() == "all" else _split([spec])
    bad = [n for n in names if n not in N_MODEL_BENCHMARKS]
    if bad or not names:
        raise SwitchLLMError(f"--n-models needs a benchmark with a train split, several models "
                             f"and dollar costs: {', '.join(N_MODEL_BENCHMARKS)} or all; got "
                             f"{(bad or [spec])[0]!r}")
    kinds = _split(args.routers) if args.routers else list(DEFAULT_KINDS)
    if kinds == ["all"]:
        kinds = list(DEFAULT_KINDS)
    if args.cv is not None and args.cv < 2:
        raise SwitchLLMError(f"--cv needs at least 2 folds, got {args.cv}")
    output = _output_dir(args.output)
    started = time.perf_counter()
    for name in dict.fromkeys(names):
        report, paths = run_n_models(name, list(dict.fromkeys(kinds)), args.cv, args.seed,
                                     output)
        print_report(report)
        print(f"  wrote {', '.join(str(p) for p in paths)}")
    print(f"\ndone in {time.perf_counter() - started:.1f}s")
    return 0


def run(args: argparse.Namespace) -> int:
    from switchllm.data.benchmarks import load_benchmark
    from switchllm.evaluation.runner import EvalSettings, choose_pair, evaluate, write_results

    if args.n_models:
        return _n_models(args)
    args.benchmark = args.benchmark or "mmlu"
    args.routers = args.routers or ["random"]
    if args.train_sizes is not None and (args.cv is not None or args.leave_out):
        raise SwitchLLMError("--train-sizes draws its own train/test split: drop --cv and "
                             "--leave-out")
    user = _user_benchmark(args) if args.data else None
    benchmarks = [user.name] if user is not None else _benchmarks(args.benchmark)
    retrain = args.cv is not None or args.leave_out or args.train_sizes is not None
    routers = _routers(_with_config(args.routers, args.config), retrain=retrain)
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

    def benchmark_named(name: str):  # noqa: ANN202
        return user if user is not None else load_benchmark(name)

    for name in benchmarks:  # check every pair before the (slow) evaluation starts
        pairs[name] = choose_pair(benchmark_named(name), args.strong_model, args.weak_model,
                                  fallback or user is not None)
    started = time.perf_counter()
    for name in benchmarks:
        strong, weak, note = pairs[name]
        if user is not None:
            note = None  # the pair is the file's (or the one asked for)
        if args.train_sizes is not None:
            _learning_curve(args, benchmark_named(name), strong, weak, output)
            continue
        results = evaluate(benchmark_named(name), routers, strong, weak, settings, note)
        if not results["routers"]:
            print(f"\n{name}: skipped, no router can score {strong} vs {weak}: "
                  + "; ".join(results["skipped"].values()))
            continue
        paths = write_results(results, output)
        _print_table(results)
        print(f"  wrote {', '.join(str(p) for p in paths)}")
    print(f"\ndone in {time.perf_counter() - started:.1f}s")
    return 0
