"""Choosing among RouterBench's 11 models: routers trained on its train split (hyper-parameters
chosen by AIQ on a validation split of it), calibrated to expected accuracy on that validation
split, evaluated once on the test split. Writes docs/results/n_models_routerbench.{json,png}.

    PYTHONPATH=. python scripts/n_model_eval.py
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from switchllm.data.battles import Battles
from switchllm.data.benchmarks import _routerbench_rows
from switchllm.evaluation.n_models import compare, plot, sweep
from switchllm.routers.choice import calibrated_quality, fit_quality_calibration_from_scores
from switchllm.training import build_router

OUT = Path("docs/results")
CANDIDATES = {"knn k=16": ("knn", {"k": 16}), "knn k=64": ("knn", {"k": 64}),
              "mf epochs=10": ("mf", {"epochs": 10}), "mf epochs=30": ("mf", {"epochs": 30}),
              "mf epochs=30 text_features=0.1": ("mf", {"epochs": 30, "text_features": 0.1})}


def predict(router, prompts, models):  # noqa: ANN001, ANN201
    scores = router.model_scores(prompts)
    return calibrated_quality(router, scores[:, [router.models.index(m) for m in models]], models)


def main() -> None:
    prompts, models, quality, cost, _ = _routerbench_rows("train")
    t_prompts, t_models, t_quality, t_cost, t_tasks = _routerbench_rows("test")
    assert list(t_models) == list(models)
    quality, t_quality = np.nan_to_num(quality), np.nan_to_num(t_quality)
    cost, t_cost = np.nan_to_num(cost), np.nan_to_num(t_cost)
    rng = np.random.default_rng(0)
    val = rng.uniform(size=len(prompts)) < 0.15
    fit_idx, val_idx = np.flatnonzero(~val), np.flatnonzero(val)
    expected_cost = cost[fit_idx].mean(axis=0)  # per-model mean $/query, from training data
    fit_battles = Battles.from_scores([prompts[i] for i in fit_idx], list(models),
                                      quality[fit_idx])
    val_prompts = [prompts[i] for i in val_idx]
    results, routers = {}, {}
    for name, (kind, params) in CANDIDATES.items():
        router = build_router(kind, params)
        router.fit(fit_battles, progress=False)
        router.card_info["quality_calibration"] = fit_quality_calibration_from_scores(
            router, val_prompts, quality[val_idx], models)
        pred = predict(router, val_prompts, models)
        c, q = sweep(pred, np.broadcast_to(expected_cost, pred.shape), quality[val_idx],
                     cost[val_idx])
        val_report = compare(models, quality[val_idx], cost[val_idx], {name: (c, q)})
        results[name] = val_report["routers"][name]["aiq"]
        routers[name] = router
        print(f"validation {name}: AIQ {results[name]:.4f}")
    chosen = max(results, key=results.get)
    router = routers[chosen]
    pred = predict(router, t_prompts, models)
    exp = np.broadcast_to(expected_cost, pred.shape)
    c, q = sweep(pred, exp, t_quality, t_cost)
    report = compare(models, t_quality, t_cost, {chosen: (c, q)})
    report["validation_aiq"] = results
    report["chosen"] = chosen
    # max-quality mode per task
    chosen_idx = np.argmax(pred - 1e-9 * exp, axis=1)
    rows = np.arange(len(t_prompts))
    tasks = {}
    for task in sorted(set(t_tasks)):
        m = np.array([t == task for t in t_tasks])
        single = t_quality[m].mean(axis=0)
        tasks[task] = {"router": float(t_quality[rows[m], chosen_idx[m]].mean()),
                       "best_single": float(single.max()),
                       "best_single_model": models[int(single.argmax())],
                       "oracle": float(t_quality[m].max(axis=1).mean())}
    report["max_quality_per_task"] = tasks
    report["max_quality_gain_points"] = float(
        100 * np.mean([v["router"] - v["best_single"] for v in tasks.values()]))
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "n_models_routerbench.json").write_text(json.dumps(report, indent=1) + "\n")
    plot(report, f"RouterBench test, 11 models: {chosen}",
         str(OUT / "n_models_routerbench.png"))
    r = report["routers"][chosen]
    print(json.dumps({k: v for k, v in r.items() if k != "points"}, indent=1))
    print("zero router AIQ", report["zero_router"], "best single", report["best_single"])
    print("oracle", report["oracle"])
    print(json.dumps(tasks, indent=1), "gain points", report["max_quality_gain_points"])


if __name__ == "__main__":
    main()
