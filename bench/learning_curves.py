"""Learning curves of your own labels (issue 8): held-out APGR of knn and mf against the number
of labelled prompts, alone and with the shipped sets, on GSM8K and MMLU (golden labels) and on
the MT-Bench human votes (pairwise labels, held out by question).

"Shipped" is the `eval --leave-out` recipe: every shipped set except the benchmark under test
(and sets sharing its prompts, and MT-Bench). The `--with-shipped` weight is chosen first on a
validation split carved out of the non-test prompts of GSM8K and MMLU only (never MT-Bench),
then each benchmark's fixed test split is scored once with the chosen weight.

    python bench/learning_curves.py [--output docs/results/learning_curves] [--seeds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from switchllm.data import benchmarks as bm  # noqa: E402
from switchllm.data.battles import Battles  # noqa: E402
from switchllm.evaluation.own_data import learning_curve, plot_learning_curve  # noqa: E402
from switchllm.training import split_by_prompt  # noqa: E402

KINDS = ("knn", "mf")
# mf's default 30 epochs over the 360k shipped battles take minutes per fit on the shared 2-core
# host: with the shipped sets the curves use 8 epochs of 2048-battle batches, and one sample per
# size (knn: 3); on your labels alone mf keeps its defaults.
SHIPPED_PARAMS = {"mf": {"epochs": 8, "batch_size": 2048}}
MF_SEEDS = [0]
WEIGHTS = (0.1, 0.25, 0.5, 0.75, 0.9)
SEARCH_KINDS = ("knn",)  # the weight search: knn only (fast); mf uses the chosen weight
GOLDEN = {"gsm8k": 0.2, "mmlu": 0.3}  # benchmark -> test fraction (GSM8K: keep 1,000 to label)
SIZES = (100, 300, 1000, 3000)  # GSM8K: up to 1,000 (1,046 prompts outside its test split)
MT_SIZES = (10, 20, 40)
MT_SPLITS = 5


def golden_battles(name: str) -> Battles:
    return bm.load_benchmark(name).to_battles()


def human_vote_battles() -> Battles:
    questions = set(bm.load_benchmark("mt-bench-human").prompts)  # decontaminated questions
    votes = bm._training_battles("mt-bench-human")
    return votes.select_prompts(np.array([p in questions for p in votes.prompts]))


def choose_weight(seeds: list[int]) -> tuple[float, dict]:
    """The weight with the best mean validation APGR over GSM8K and MMLU, kinds and sizes."""
    table: dict[str, dict] = {}
    for name, test_fraction in GOLDEN.items():
        pool, _ = split_by_prompt(golden_battles(name), test_fraction, 0)  # drop the test split
        for weight in WEIGHTS:
            result = learning_curve(pool, SEARCH_KINDS, (100, 300, 1000), bm.STRONG, bm.WEAK,
                                    test_fraction=0.3, split_seed=1, seeds=seeds,
                                    modes=("with_shipped",), weight=weight, progress=False,
                                    exclude=bm.leave_out_exclusions(name))
            table.setdefault(str(weight), {})[name] = {
                kind: {n: v["mean"] for n, v in entry["with_shipped"].items()}
                for kind, entry in result["curves"].items()}
            print(f"validation {name} weight {weight}: {table[str(weight)][name]}", flush=True)
    means = {w: float(np.mean([v for per_bench in by_bench.values()
                               for per_kind in per_bench.values()
                               for v in per_kind.values() if v is not None]))
             for w, by_bench in table.items()}
    best = max(means, key=means.get)
    return float(best), {"per_weight": table, "mean": means, "chosen": float(best)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="docs/results/learning_curves")
    parser.add_argument("--seeds", type=int, default=3, help="training samples per size")
    parser.add_argument("--weight", type=float, default=None,
                        help="skip the validation search and use this weight")
    args = parser.parse_args()
    output = Path(args.output)
    output.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seeds))
    started = time.perf_counter()
    report: dict = {"seeds": seeds, "kinds": list(KINDS)}
    if args.weight is None:
        weight, report["weight_search"] = choose_weight(seeds)
    else:
        weight = args.weight
    report["weight"] = weight
    print(f"weight: {weight}", flush=True)
    for name, test_fraction in GOLDEN.items():
        common = {"test_fraction": test_fraction, "weight": weight, "progress": False,
                  "exclude": bm.leave_out_exclusions(name), "shipped_params": SHIPPED_PARAMS}
        result = learning_curve(golden_battles(name), ["knn"], SIZES, bm.STRONG, bm.WEAK,
                                seeds=seeds, **common)
        result["curves"]["mf"] = learning_curve(golden_battles(name), ["mf"], SIZES, bm.STRONG,
                                                bm.WEAK, seeds=MF_SEEDS, **common)["curves"]["mf"]
        result["seeds_per_kind"] = {"knn": seeds, "mf": MF_SEEDS}
        report[name] = result
        plot_learning_curve(result, output / f"{name}.png", f"{name} golden labels")
        print(name, json.dumps({k: {m: {n: s["mean"] for n, s in v.items()} if m != "shipped_only"
                                    else v["mean"] for m, v in e.items()}
                                for k, e in result["curves"].items()}), flush=True)
    strong, weak = bm.load_benchmark("mt-bench-human").default_pair
    votes = human_vote_battles()
    splits = [learning_curve(votes, ("knn",), MT_SIZES, strong, weak, test_fraction=0.5,
                             split_seed=s, seeds=seeds, weight=weight, progress=False,
                             exclude=bm.leave_out_exclusions("mt-bench-human"))
              for s in range(MT_SPLITS)]
    merged = splits[0]
    for kind, entry in merged["curves"].items():  # pool the splits: mean over all runs
        for mode, per_size in entry.items():
            groups = ([per_size] if mode == "shipped_only" else list(per_size.values()))
            keys = [None] if mode == "shipped_only" else list(per_size)
            for key, summary in zip(keys, groups, strict=True):
                values = [v for split in splits for v in (
                    split["curves"][kind][mode]["values"] if key is None
                    else split["curves"][kind][mode][key]["values"]) if v is not None]
                summary.update(values=values, mean=round(float(np.mean(values)), 5),
                               std=round(float(np.std(values)), 5))
    merged["split_seed"] = list(range(MT_SPLITS))
    merged["seeds"] = [f"{s}x{MT_SPLITS} splits" for s in seeds]
    report["mt-bench-human"] = merged
    plot_learning_curve(merged, output / "mt-bench-human.png",
                        f"MT-Bench human votes, {MT_SPLITS} question splits")
    report["seconds"] = round(time.perf_counter() - started, 1)
    (output / "learning_curves.json").write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {output}/learning_curves.json and PNGs in {report['seconds']}s")


if __name__ == "__main__":
    main()
