"""`switchllm eval --n-models`: routers choosing among every model of a benchmark that has
per-model quality and dollar costs (RouterBench: 11 models, real per-query costs; LLMRouter: 9
models, costs from prices), trained honestly, then compared with every single model, the Zero
router (their convex hull) and the oracle (`evaluation.n_models`).

Two modes:
- held-out (default): each router kind is trained on the benchmark's train split (minus any
  prompt that is also in the test split), calibrated on a validation part of it, and measured
  once on the test split;
- cv K: K folds of the test split by prompt; each fold is predicted by a router trained and
  calibrated on the other folds (in-domain).

Per router: a sweep of willingness to pay lambda (quality - lambda * expected cost), AIQ over
the single models' cost range, the quality at the best single model's cost, the cost to match
its quality, the share of the cost range above the Zero-router hull; max-quality mode per task
against the best single model and the oracle; and the calibration's reliability on the
evaluated prompts. Expected cost per prompt comes from the training data only (`CostModel`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from switchllm.errors import SwitchLLMError
from switchllm.evaluation.n_models import compare, sweep
from switchllm.routers.choice import (
    CHARS_PER_TOKEN,
    calibrated_quality,
    fit_quality_calibration_from_scores,
)

N_MODEL_BENCHMARKS = ("routerbench", "llmrouter")
# Settings per kind, chosen by validation AIQ (mean of 3 validation splits of RouterBench's
# train split, scripts/n_model_eval.py; docs/RESULTS.md has the search), never on a test
# split: knn scores models by their measured quality on 32 neighbours, used as is (0.829;
# battle results with isotonic calibration, the earlier setting, 0.803-0.812); the others are
# Platt-calibrated (mf 10 epochs 0.817, isotonic 0.797).
N_MODEL_PARAMS: dict[str, dict[str, Any]] = {
    "knn": {"k": 128, "quality_memory": True, "calibration": "identity"},
    "mf": {"epochs": 10, "calibration": "platt"},
    "sw_ranking": {"calibration": "platt"},
}
DEFAULT_KINDS = ("random", "knn", "mf")
ENSEMBLE = "ensemble"  # mean of the calibrated qualities of the learned kinds evaluated
VALIDATION_SHARE = 0.15
DEFAULT_CALIBRATION = "platt"
RELIABILITY_BINS = 10


@dataclass(frozen=True)
class Split:
    """One split of an N-model benchmark: (n, k) quality in [0, 1] and dollar cost."""

    prompts: list[str]
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray
    tasks: list[str] = field(default_factory=list)

    def take(self, rows: np.ndarray) -> Split:
        return Split([self.prompts[i] for i in rows], self.models, self.quality[rows],
                     self.cost[rows], [self.tasks[i] for i in rows] if self.tasks else [])


def load_split(name: str, split: str) -> Split:
    """The train or test split of an N-model benchmark, NaN quality or cost as 0."""
    from switchllm.data import benchmarks as b

    if name == "routerbench":
        prompts, models, quality, cost, tasks = b._routerbench_rows(split)
        return Split(prompts, list(models), np.nan_to_num(quality), np.nan_to_num(cost),
                     list(tasks))
    if name == "llmrouter":
        prompts, raw_models, quality = b._llmrouter_split(split)
        prices = b._llmrouter_prices()
        tokens = np.array([math.ceil(len(p) / b.CHARS_PER_TOKEN) for p in prompts], float)
        cost = (tokens[:, None] * np.array([prices[m]["input"] for m in raw_models])
                + b.ASSUMED_OUTPUT_TOKENS * np.array([prices[m]["output"] for m in raw_models])
                ) / 1e6
        return Split(prompts, [b.canonical_model(m) for m in raw_models],
                     np.nan_to_num(quality), cost)
    raise SwitchLLMError(f"--n-models needs a benchmark with a train split, several models and "
                         f"dollar costs: {', '.join(N_MODEL_BENCHMARKS)}; got {name!r}")


def held_out_splits(name: str) -> tuple[Split, Split]:
    """(train, test); train prompts that reappear in the test split are dropped."""
    train, test = load_split(name, "train"), load_split(name, "test")
    if set(train.models) != set(test.models):
        raise SwitchLLMError(f"{name}: train and test splits list different models")
    columns = [train.models.index(m) for m in test.models]  # the test split's order
    train = Split(train.prompts, test.models, train.quality[:, columns],
                  train.cost[:, columns], train.tasks)
    seen = set(test.prompts)
    return train.take(np.array([i for i, p in enumerate(train.prompts) if p not in seen])), test


class CostModel:
    """Expected dollars per prompt and model, learned from training costs: per model, a
    least-squares line in the prompt's estimated input tokens (characters / 4), which is what
    a provider bills for a prompt plus the mean cost of the answer. Negative fits are clipped
    to the model's mean cost."""

    def __init__(self, prompts: Sequence[str], cost: np.ndarray) -> None:
        tokens = _tokens(prompts)
        design = np.stack([np.ones_like(tokens), tokens], axis=1)
        self.coef = np.linalg.lstsq(design, cost, rcond=None)[0]  # (2, k)
        self.mean = cost.mean(axis=0)

    def predict(self, prompts: Sequence[str]) -> np.ndarray:
        tokens = _tokens(prompts)
        out = self.coef[0] + tokens[:, None] * self.coef[1]
        return np.where(out > 0, out, self.mean)


def _tokens(prompts: Sequence[str]) -> np.ndarray:
    return np.array([len(p) / CHARS_PER_TOKEN for p in prompts], dtype=np.float64)


def _calibrated(router: Any, scores: np.ndarray, models: Sequence[str]) -> np.ndarray:
    columns = [router.models.index(m) for m in models]
    return calibrated_quality(router, np.asarray(scores, np.float64)[:, columns], models)


def train_and_predict(kind: str, train: Split, targets: Sequence[str], seed: int,
                      params: dict[str, Any] | None = None,
                      calibration: str | None = None) -> dict[str, np.ndarray]:
    """Fit a `kind` router on most of `train`, calibrate it (`calibration`: isotonic or
    platt) on the rest (VALIDATION_SHARE), and predict quality on `targets`; the validation
    prompts' predictions are cross-fitted (each half calibrated on the other half), so that
    choosing settings on them does not reward a calibration that memorised them:
    {"val_rows", "val", "target"}."""
    from switchllm.data.battles import Battles
    from switchllm.training import build_router

    settings = dict(N_MODEL_PARAMS.get(kind, {}) if params is None else params)
    method = calibration or settings.pop("calibration", DEFAULT_CALIBRATION)
    settings.pop("calibration", None)
    rng = np.random.default_rng(seed)
    is_val = rng.uniform(size=len(train.prompts)) < VALIDATION_SHARE
    fit, val = train.take(np.flatnonzero(~is_val)), train.take(np.flatnonzero(is_val))
    quality_memory = bool(settings.pop("quality_memory", False))
    router = build_router(kind, settings)
    battles = Battles.from_scores(fit.prompts, train.models, fit.quality)
    router.fit(battles, progress=False)
    if quality_memory:  # knn: neighbours' measured quality, not their battle results
        row = {p: i for i, p in enumerate(fit.prompts)}
        router.remember_quality(fit.quality[[row[p] for p in battles.prompts]])
    val_scores = np.asarray(router.model_scores(val.prompts), dtype=np.float64)
    half = rng.uniform(size=len(val.prompts)) < 0.5
    val_pred = np.zeros(val.quality.shape)
    for side in (half, ~half):
        rows = np.flatnonzero(~side)
        router.card_info["quality_calibration"] = fit_quality_calibration_from_scores(
            router, [val.prompts[i] for i in rows], val.quality[rows], train.models, method,
            scores=val_scores[rows])
        val_pred[side] = _calibrated(router, val_scores[side], train.models)
    router.card_info["quality_calibration"] = fit_quality_calibration_from_scores(
        router, val.prompts, val.quality, train.models, method, scores=val_scores)
    target = (_calibrated(router, router.model_scores(list(targets)), train.models)
              if len(targets) else np.zeros((0, len(train.models))))
    return {"val_rows": np.flatnonzero(is_val), "val": val_pred, "target": target}


def random_quality(n: int, k: int, seed: int) -> np.ndarray:
    """The random router: a uniform random quality per prompt and model."""
    return np.random.default_rng(seed).uniform(size=(n, k))


def reliability(predicted: np.ndarray, observed: np.ndarray,
                bins: int = RELIABILITY_BINS) -> dict[str, Any]:
    """Reliability of predicted quality: per equal-width bin of the prediction, the mean
    prediction, the mean observed quality and the count; ECE = the count-weighted mean gap."""
    p, o = predicted.reshape(-1), observed.reshape(-1)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        mask = which == b
        if not mask.any():
            continue
        mp, mo = float(p[mask].mean()), float(o[mask].mean())
        rows.append({"predicted": mp, "observed": mo, "count": int(mask.sum())})
        ece += mask.sum() * abs(mp - mo)
    return {"bins": rows, "ece": float(ece / max(len(p), 1))}


def max_quality_by_task(predicted: np.ndarray, expected_cost: np.ndarray, data: Split
                        ) -> dict[str, Any]:
    """Max-quality mode (the best predicted model, the cheaper one on ties) per task: the
    chosen models' mean quality against the task's best single model and the oracle."""
    chosen = np.lexsort((expected_cost, -predicted), axis=1)[:, 0]
    got = data.quality[np.arange(len(chosen)), chosen]
    tasks = np.array(data.tasks) if data.tasks else np.array(["all"] * len(chosen))
    out = {}
    for task in sorted(set(tasks.tolist())):
        mask = tasks == task
        single = data.quality[mask].mean(axis=0)
        out[task] = {"prompts": int(mask.sum()), "router": float(got[mask].mean()),
                     "best_single": float(single.max()),
                     "best_single_model": data.models[int(single.argmax())],
                     "oracle": float(data.quality[mask].max(axis=1).mean())}
    return out


def _router_report(predicted: np.ndarray, expected: np.ndarray, data: Split,
                   val: tuple[np.ndarray, np.ndarray, Split] | None) -> dict[str, Any]:
    """The sweep on `data`, plus validation AIQ when the prediction has a validation part."""
    entry: dict[str, Any] = {"sweep": sweep(predicted, expected, data.quality, data.cost)}
    entry["max_quality"] = max_quality_by_task(predicted, expected, data)
    entry["reliability"] = reliability(predicted, data.quality)
    if val is not None:
        vp, ve, vdata = val
        c, q = sweep(vp, ve, vdata.quality, vdata.cost)
        entry["validation_aiq"] = compare(vdata.models, vdata.quality, vdata.cost,
                                          {"r": (c, q)})["routers"]["r"]["aiq"]
    return entry


def evaluate_n_models(name: str, kinds: Sequence[str], mode: str = "held-out", folds: int = 5,
                      seed: int = 0, ensemble: bool = True) -> dict[str, Any]:
    """The N-model report of `kinds` (router kinds and/or "random") on benchmark `name`."""
    from switchllm.routers import ROUTER_KINDS, router_class

    learned = [k for k in kinds if k != "random"]
    for kind in learned:
        if kind not in ROUTER_KINDS:
            raise SwitchLLMError(f"--n-models trains router kinds; {kind!r} is not one "
                                 f"(known: random, {', '.join(ROUTER_KINDS)})")
        if not _scores_models(router_class(kind)):
            raise SwitchLLMError(f"the {kind} router answers pairs only: it cannot choose "
                                 "among N models (use knn, mf, sw_ranking or bert)")
    if mode == "held-out":
        train, data = held_out_splits(name)
        parts = [(np.arange(len(data.prompts)), train)]
    elif mode == "cv":
        data = load_split(name, "test")
        fold = np.random.default_rng(seed).permutation(len(data.prompts)) % folds
        parts = [(np.flatnonzero(fold == f), data.take(np.flatnonzero(fold != f)))
                 for f in range(folds)]
    else:
        raise SwitchLLMError(f"--n-models runs held-out or --cv, not {mode!r}")
    n, k = data.quality.shape
    predicted: dict[str, np.ndarray] = {kind: np.zeros((n, k)) for kind in kinds}
    expected = np.zeros((n, k))
    val_parts: dict[str, list[tuple[np.ndarray, np.ndarray, Split]]] = {kind: [] for kind in kinds}
    for part, (rows, train) in enumerate(parts):
        targets = [data.prompts[i] for i in rows]
        costs = CostModel(train.prompts, train.cost)
        expected[rows] = costs.predict(targets)
        for kind in kinds:
            if kind == "random":
                predicted[kind][rows] = random_quality(len(rows), k, seed + part)
                continue
            out = train_and_predict(kind, train, targets, seed + part)
            predicted[kind][rows] = out["target"]
            vdata = train.take(out["val_rows"])
            val_parts[kind].append((out["val"], costs.predict(vdata.prompts), vdata))
    names = list(kinds)
    if ensemble and len(learned) >= 2:
        predicted[ENSEMBLE] = np.mean([predicted[kind] for kind in learned], axis=0)
        val_parts[ENSEMBLE] = [
            (np.mean([val_parts[kind][i][0] for kind in learned], axis=0), *val_parts[
                learned[0]][i][1:]) for i in range(len(parts))]
        names.append(ENSEMBLE)
    routers = {}
    for kind in names:
        vals = val_parts.get(kind) or []
        val = None
        if vals:  # validation parts of every fold, pooled
            val = (np.concatenate([v[0] for v in vals]), np.concatenate([v[1] for v in vals]),
                   _concat([v[2] for v in vals]))
        routers[kind] = _router_report(predicted[kind], expected, data, val)
    report = compare(data.models, data.quality, data.cost,
                     {kind: entry["sweep"] for kind, entry in routers.items()})
    for kind, entry in routers.items():
        extra = report["routers"][kind]
        gains = [t["router"] - t["best_single"] for t in entry["max_quality"].values()]
        extra["max_quality_by_task"] = entry["max_quality"]
        extra["max_quality_gain_points"] = float(100 * np.mean(gains))
        extra["reliability"] = entry["reliability"]
        if "validation_aiq" in entry:
            extra["validation_aiq"] = entry["validation_aiq"]
    best = max((kind for kind in routers if kind != "random"),
               key=lambda kind: report["routers"][kind].get("validation_aiq", -1.0),
               default=None)
    report.update({"benchmark": name, "mode": mode, "folds": folds if mode == "cv" else None,
                   "n_prompts": n, "seed": seed, "chosen_on_validation": best,
                   "oracle_by_task": {t: v["oracle"] for t, v in (
                       max_quality_by_task(data.quality, expected, data).items())}})
    return report


def _scores_models(cls: type) -> bool:
    from switchllm.routers.base import Router

    return cls.model_scores is not Router.model_scores


def _concat(splits: list[Split]) -> Split:
    return Split([p for s in splits for p in s.prompts], splits[0].models,
                 np.concatenate([s.quality for s in splits]),
                 np.concatenate([s.cost for s in splits]),
                 [t for s in splits for t in s.tasks])
