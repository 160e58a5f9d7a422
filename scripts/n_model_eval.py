"""Choosing the N-model routers' settings on validation only: RouterBench's train split is cut
into fit and validation parts (`VALIDATION_SHARE`, several seeds); each candidate is fitted,
calibrated and scored on the validation part by AIQ, the cost to match the best single model,
and the max-quality gain per task. The test split is never read here: `switchllm eval
--n-models` measures the chosen settings on it once.

    PYTHONPATH=. python scripts/n_model_eval.py [--seeds 0,1,2] [--benchmark routerbench]

Writes docs/results/n_models_selection_<benchmark>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from switchllm.evaluation.n_model_eval import CostModel, held_out_splits, train_and_predict
from switchllm.evaluation.n_models import compare, sweep

OUT = Path("docs/results")
CANDIDATES: dict[str, tuple[str, dict]] = {
    "knn k=8": ("knn", {"k": 8}), "knn k=16": ("knn", {"k": 16}),
    "knn k=32": ("knn", {"k": 32}), "knn k=64": ("knn", {"k": 64}),
    "mf epochs=5": ("mf", {"epochs": 5}), "mf epochs=10": ("mf", {"epochs": 10}),
    "mf epochs=20": ("mf", {"epochs": 20}),
    "mf epochs=10 text_features=0.1": ("mf", {"epochs": 10, "text_features": 0.1}),
    "sw_ranking": ("sw_ranking", {}),
    # knn scoring each model by its measured quality on the neighbours, used as is
    **{f"knn k={k} quality_memory": ("knn", {"k": k, "quality_memory": True,
                                             "calibration": "identity"})
       for k in (16, 32, 64, 128)},
}
# the same settings with Platt (per-model logistic) calibration instead of isotonic
CANDIDATES.update({f"{name} platt": (kind, {**params, "calibration": "platt"})
                   for name, (kind, params) in list(CANDIDATES.items())
                   if "calibration" not in params})
CANDIDATES.update({f"knn k={k} quality_memory smoothing={m}": (
    "knn", {"k": k, "quality_memory": True, "calibration": "identity", "smoothing": m})
    for k in (32, 128) for m in (0.5, 8, 32)})
# the embedding the measured-quality knn reads long prompts with (the default now reads their
# ends too: all-MiniLM-L6-v2+tail)
CANDIDATES.update({f"knn k={k} quality_memory head-only": (
    "knn", {"k": k, "quality_memory": True, "calibration": "identity",
            "embedding_model": "all-MiniLM-L6-v2"}) for k in (32, 64, 128)})
CANDIDATES.update({f"knn k={k} quality_memory platt": (
    "knn", {"k": k, "quality_memory": True, "calibration": "platt"}) for k in (32, 64)})
ENSEMBLES = {f"{a} + {b}{c}": (a + c, b + c) for c in ("", " platt")
             for a, b in (("knn k=16", "mf epochs=10"), ("knn k=32", "mf epochs=10"),
                          ("knn k=32", "sw_ranking"), ("knn k=32", "mf epochs=20"))}
ENSEMBLES.update({f"knn k={k} quality_memory + mf epochs=10 platt": (
    f"knn k={k} quality_memory", "mf epochs=10 platt") for k in (32, 64)})


def scores(pred: np.ndarray, exp: np.ndarray, val) -> dict[str, float]:  # noqa: ANN001
    c, q = sweep(pred, exp, val.quality, val.cost)
    r = compare(val.models, val.quality, val.cost, {"r": (c, q)})["routers"]["r"]
    chosen = np.lexsort((exp, -pred), axis=1)[:, 0]
    got = val.quality[np.arange(len(chosen)), chosen]
    tasks = np.array(val.tasks)
    gain = np.mean([got[tasks == t].mean() - val.quality[tasks == t].mean(axis=0).max()
                    for t in sorted(set(val.tasks))]) if val.tasks else float("nan")
    return {"aiq": r["aiq"], "cost_share": r["cost_share_of_best_single"] or 1.5,
            "gain_points": 100 * float(gain), "above": r["above_zero_share"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--benchmark", default="routerbench")
    parser.add_argument("--only", default=None, help="comma-separated candidate names")
    parser.add_argument("--suffix", default="", help="appended to the output file's name")
    args = parser.parse_args()
    train, _ = held_out_splits(args.benchmark)  # the test split is not used
    seeds = [int(s) for s in args.seeds.split(",")]
    names = args.only.split(",") if args.only else list(CANDIDATES)
    results: dict[str, list[dict[str, float]]] = {}
    for seed in seeds:
        preds = {}
        for name in names:
            kind, params = CANDIDATES[name]
            started = time.perf_counter()
            out = train_and_predict(kind, train, [], seed, params)
            val = train.take(out["val_rows"])
            fit_rows = np.setdiff1d(np.arange(len(train.prompts)), out["val_rows"])
            fit = train.take(fit_rows)
            exp = CostModel(fit.prompts, fit.cost).predict(val.prompts)
            preds[name] = out["val"]
            results.setdefault(name, []).append(scores(out["val"], exp, val))
            print(f"seed {seed} {name}: {results[name][-1]} "
                  f"({time.perf_counter() - started:.1f}s)", flush=True)
        for name, parts in ENSEMBLES.items():
            if all(p in preds for p in parts):
                pred = np.mean([preds[p] for p in parts], axis=0)
                results.setdefault(name, []).append(scores(pred, exp, val))
                print(f"seed {seed} {name}: {results[name][-1]}", flush=True)
    summary = {name: {key: float(np.mean([r[key] for r in runs])) for key in runs[0]}
               for name, runs in results.items()}
    print(json.dumps(summary, indent=1))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"n_models_selection_{args.benchmark}{args.suffix}.json").write_text(json.dumps(
        {"seeds": seeds, "mean": summary, "runs": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
