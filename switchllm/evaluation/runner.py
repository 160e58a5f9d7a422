"""Evaluate routers on a benchmark: win rates -> routing curves -> metrics -> JSON + plots.

Three ways to get a learned router's win rates:
- plain: the router as given (a shipped default card or your card directory);
- cv K: K folds split by prompt text; a fresh router of the same kind and parameters is trained
  on the benchmark's other folds (`benchmark.to_battles()`) and scores the held-out fold;
- leave-out: a fresh router trained with the shipped defaults' recipe
  (`router_training_battles`) on the shipped sets minus the benchmark, any set sharing its
  prompts, and MT-Bench (`leave_out_exclusions`).
The random router learns nothing, so it is always evaluated as is (seeded).
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from switchllm.data.benchmarks import (
    Benchmark,
    leave_out_exclusions,
    router_training_battles,
)
from switchllm.errors import SwitchLLMError, UnknownModelError
from switchllm.evaluation import metrics
from switchllm.routers import ROUTER_KINDS, load_router, router_class
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL, Router, read_card

MODES = ("plain", "cv", "leave-out")
BATCH_SIZE = 256


@dataclass(frozen=True)
class EvalSettings:
    mode: str = "plain"
    cv_folds: int = 5
    seed: int = 0
    batch_size: int = BATCH_SIZE
    random_iters: int = len(metrics.RANDOM_SEEDS)  # seeds averaged for the random reference


def choose_pair(benchmark: Benchmark, strong: str | None, weak: str | None,
                fallback: bool) -> tuple[str, str, str | None]:
    """(strong, weak, note): the requested pair (default: RouteLLM's), or with `fallback` the
    benchmark's own default pair when the requested one is not in it (the note says so)."""
    wanted = (strong or DEFAULT_STRONG_MODEL, weak or DEFAULT_WEAK_MODEL)
    missing = [m for m in wanted if m not in benchmark.models]
    if not missing:
        if wanted[0] == wanted[1]:
            raise SwitchLLMError(f"strong and weak model are the same: {wanted[0]!r}")
        return wanted[0], wanted[1], None
    if not fallback:
        raise UnknownModelError(
            f"model {missing[0]!r} is not in benchmark {benchmark.name}; its models: "
            f"{', '.join(benchmark.models)}"
        )
    pair = benchmark.default_pair
    return pair[0], pair[1], (f"{' and '.join(missing)} not in {benchmark.name}: using its "
                              f"default pair {pair[0]} vs {pair[1]}")


def win_rates(router: Router, prompts: Sequence[str], strong: str, weak: str,
              batch_size: int = BATCH_SIZE, desc: str = "routing") -> np.ndarray:
    """The router's strong win rate for every prompt, in batches, with a progress bar."""
    from tqdm import tqdm

    out = np.empty(len(prompts), dtype=np.float64)
    starts = range(0, len(prompts), batch_size)
    for start in tqdm(starts, desc=desc, unit="batch", leave=False,
                      disable=True if len(starts) < 2 else None):
        batch = list(prompts[start:start + batch_size])
        rates = np.asarray(router.win_rate(batch, strong, weak), dtype=np.float64)
        if rates.shape != (len(batch),):
            raise SwitchLLMError(f"router {router.kind} returned {rates.shape} win rates for "
                                 f"{len(batch)} prompts")
        out[start:start + len(batch)] = rates
    if not np.all((out >= 0) & (out <= 1)):
        raise SwitchLLMError(f"router {router.kind} returned win rates outside [0, 1] or NaN")
    return out


def _kind_and_params(spec: str) -> tuple[str, dict[str, Any]]:
    """Router kind and hyper-parameters to train afresh: a kind name (default parameters) or a
    card directory (its type and parameters)."""
    if spec in ROUTER_KINDS:
        kind, params = spec, {}
        if kind == "ensemble":  # the shipped ensemble's members, not the class defaults
            from switchllm.routers import DEFAULTS_DIR

            if (DEFAULTS_DIR / kind / "router.json").is_file():
                card, _ = read_card(DEFAULTS_DIR / kind)
                params = dict(card.get("params", {}))
    elif Path(spec).is_dir():
        card, _ = read_card(Path(spec))
        kind, params = card["type"], dict(card.get("params", {}))
    else:
        load_router(spec)  # raises the registry's error naming the known routers
        raise SwitchLLMError(f"cannot retrain router {spec!r}")
    if kind == "ensemble":  # retrained members: the shipped ones saw the benchmark's prompts
        params["train_members"] = True
    return kind, params


def _cv_win_rates(kind: str, params: dict[str, Any], benchmark: Benchmark, rows: np.ndarray,
                  strong: str, weak: str, settings: EvalSettings) -> np.ndarray:
    """Out-of-fold win rates for benchmark prompts `rows` (folds split by prompt text)."""
    folds = settings.cv_folds
    unique = list(dict.fromkeys(benchmark.prompts))
    if not 2 <= folds <= len(unique):
        raise SwitchLLMError(f"--cv needs between 2 and {len(unique)} folds, got {folds}")
    order = np.random.default_rng(settings.seed).permutation(len(unique))
    fold_of_text = {unique[i]: rank % folds for rank, i in enumerate(order)}
    fold = np.array([fold_of_text[p] for p in benchmark.prompts])
    battles = benchmark.extra.get("battles")  # a user file: every battle, not only the pair's
    if battles is None:
        battles = benchmark.to_battles()
    out = np.empty(len(rows))
    for k in range(folds):
        router = router_class(kind)(**params).fit(battles.select_prompts(fold != k),
                                                  progress=True)
        held_out = fold[rows] == k
        prompts = [benchmark.prompts[i] for i in rows[held_out]]
        out[held_out] = win_rates(router, prompts, strong, weak, settings.batch_size,
                                  desc=f"{kind} fold {k + 1}/{folds}")
    return out


def router_win_rates(spec: str, benchmark: Benchmark, rows: np.ndarray, strong: str, weak: str,
                     settings: EvalSettings, known: dict[Path, np.ndarray] | None = None
                     ) -> tuple[str, np.ndarray]:
    """(name in the results, win rates on benchmark prompts `rows`). `known`: win rates of
    cards already evaluated on the same rows and pair, by card directory; plain mode adds to
    it, and an ensemble whose members are all in it combines their rates instead of asking
    them again."""
    prompts = [benchmark.prompts[i] for i in rows]
    if spec == "random":
        return spec, win_rates(router_class("random")(seed=settings.seed), prompts, strong, weak)
    if settings.mode == "plain":
        router = load_router(spec)
        rates = _ensemble_from_members(router, known or {})
        if rates is None:
            rates = win_rates(router, prompts, strong, weak, settings.batch_size, desc=spec)
        if known is not None and router.card_info.get("path"):
            known[Path(router.card_info["path"]).resolve()] = rates
        return spec, rates
    kind, params = _kind_and_params(spec)
    if settings.mode == "cv":
        name = f"{spec} (cv{settings.cv_folds})"
        return name, _cv_win_rates(kind, params, benchmark, rows, strong, weak, settings)
    if settings.mode == "leave-out":
        exclude = leave_out_exclusions(benchmark.name)
        battles = router_training_battles(exclude, strong, weak)
        router = router_class(kind)(**params).fit(battles, progress=True)
        return (f"{spec} (leave-out)",
                win_rates(router, prompts, strong, weak, settings.batch_size, desc=spec))
    raise SwitchLLMError(f"unknown evaluation mode {settings.mode!r}; known: {', '.join(MODES)}")


def _ensemble_from_members(router: Router, known: dict[Path, np.ndarray]) -> np.ndarray | None:
    """An ensemble's win rates from its members' rates computed earlier in this run (the same
    cards: members are checked against the weights digests on the ensemble's card), or None."""
    from switchllm.routers.ensemble import EnsembleRouter, logit

    if not isinstance(router, EnsembleRouter) or not known:
        return None
    paths = [Path(m.card_info.get("path", "")).resolve() for m in router.member_routers()]
    if not all(p in known for p in paths):
        return None
    return router.combine(np.stack([logit(known[p]) for p in paths], axis=1))


def card_in_sample(spec: str, benchmark: Benchmark) -> dict[str, Any] | None:
    """Why the card `spec` (a shipped default name or a card directory) was trained on
    `benchmark`'s prompts, or None. Cards record their shipped sets and prompt digests; the
    shipped defaults made before that are known from their recipe (scripts/train_defaults.py:
    every training set except MT-Bench)."""
    from switchllm.data.benchmarks import DEFAULT_TRAINING_EXCLUDE
    from switchllm.data.own_data import in_sample, shipped_sets
    from switchllm.routers import DEFAULTS_DIR

    if spec == "random":
        return None
    path = DEFAULTS_DIR / spec if spec in ROUTER_KINDS else Path(spec)
    try:
        card = json.loads((path / "router.json").read_text())
    except (OSError, ValueError):
        return None
    training = dict(card.get("training") or {})
    if "shipped_sets" not in training and path.resolve().parent == DEFAULTS_DIR.resolve():
        training["shipped_sets"] = shipped_sets(DEFAULT_TRAINING_EXCLUDE)
    return in_sample(training, benchmark.name, benchmark.prompts)


def _router_entry(rates: np.ndarray, qs: np.ndarray, qw: np.ndarray, weak: float, strong: float,
                  cs: np.ndarray | None, cw: np.ndarray | None) -> dict[str, Any]:
    curve = metrics.routing_curve(rates, qs, qw, metrics.REPORT_LEVELS, cs, cw)
    coarse = metrics.routing_curve(rates, qs, qw, metrics.ROUTELLM_LEVELS)
    entry: dict[str, Any] = metrics.summarize(curve, weak, strong)
    entry["routellm_deciles"] = {**metrics.summarize(coarse, weak, strong),
                                 "curve": coarse.to_dict()}
    entry["curve"] = curve.to_dict()
    return entry


def evaluate(benchmark: Benchmark, routers: Sequence[str], strong: str, weak: str,
             settings: EvalSettings = EvalSettings(), pair_note: str | None = None
             ) -> dict[str, Any]:
    """Evaluate `routers` on `benchmark` for the pair; the results as a JSON-ready dict."""
    if settings.mode not in MODES:
        raise SwitchLLMError(f"unknown evaluation mode {settings.mode!r}")
    si, wi = benchmark.model_index(strong), benchmark.model_index(weak)
    scale = benchmark.quality_scale
    measured = ~np.isnan(benchmark.quality[:, si]) & ~np.isnan(benchmark.quality[:, wi])
    has_cost = benchmark.cost is not None and len(benchmark.models) > 2
    if has_cost:
        measured &= ~np.isnan(benchmark.cost[:, si]) & ~np.isnan(benchmark.cost[:, wi])
    rows = np.nonzero(measured)[0]
    if len(rows) < 2:
        raise SwitchLLMError(f"{benchmark.name}: fewer than 2 prompts scored for {strong} and "
                             f"{weak}")
    qs, qw = benchmark.quality[rows, si] * scale, benchmark.quality[rows, wi] * scale
    weak_q, strong_q = float(qw.mean()), float(qs.mean())
    cs = benchmark.cost[rows, si] if has_cost else None
    cw = benchmark.cost[rows, wi] if has_cost else None

    random_curve, random_metrics = metrics.random_reference(
        qs, qw, seeds=tuple(range(settings.random_iters)))
    oracle = metrics.oracle_curve(qs, qw)
    results: dict[str, Any] = {
        "benchmark": benchmark.name,
        "description": benchmark.description,
        "quality_label": benchmark.quality_label,
        "n_prompts": int(len(rows)),
        "pair": {"strong": strong, "weak": weak},
        "pair_note": pair_note,
        "mode": settings.mode,
        "cv_folds": settings.cv_folds if settings.mode == "cv" else None,
        "seed": settings.seed,
        "metric_grid": (f"metrics use {metrics.REPORT_LEVELS} thresholds at win-rate quantiles "
                        f"0..1; 'routellm_deciles' repeats them on RouteLLM's "
                        f"{metrics.ROUTELLM_LEVELS} decile thresholds"),
        "references": {
            "weak": {"model": weak, "quality": weak_q},
            "strong": {"model": strong, "quality": strong_q},
            "random": {**random_metrics, "seeds": settings.random_iters,
                       "curve": random_curve.to_dict()},
            "oracle": {**metrics.summarize(oracle, weak_q, strong_q), "curve": oracle.to_dict()},
        },
        "routers": {},
        "skipped": {},
    }
    known: dict[Path, np.ndarray] = {}  # cards' win rates on these rows, for ensembles
    for spec in routers:
        started = time.perf_counter()
        try:
            name, rates = router_win_rates(spec, benchmark, rows, strong, weak, settings, known)
        except UnknownModelError as exc:  # a router that cannot score this pair
            results["skipped"][spec] = exc.short
            continue
        entry = _router_entry(rates, qs, qw, weak_q, strong_q, cs, cw)
        entry["seconds"] = round(time.perf_counter() - started, 3)
        if settings.mode == "plain":
            entry["in_sample"] = card_in_sample(spec, benchmark)
        results["routers"][name] = entry
    if has_cost:
        results["cost"] = _cost_section(benchmark, rows, results["routers"], scale)
    return results


def _cost_section(benchmark: Benchmark, rows: np.ndarray, routers: dict[str, Any],
                  scale: float) -> dict[str, Any]:
    """Each model's (mean cost, quality) point, and AIQ of the routers and of the models' hull
    over the cost range from the weak to the strong model."""
    assert benchmark.cost is not None
    points = {}
    for j, model in enumerate(benchmark.models):
        ok = rows[~np.isnan(benchmark.quality[rows, j]) & ~np.isnan(benchmark.cost[rows, j])]
        if len(ok):
            points[model] = {"cost": float(benchmark.cost[ok, j].mean()),
                             "quality": float(benchmark.quality[ok, j].mean() * scale)}
    out: dict[str, Any] = {"unit": "US dollars per query", "models": points}
    if not routers:
        return out
    some = next(iter(routers.values()))["curve"]["cost"]
    lo, hi = float(min(some)), float(max(some))  # all-weak and all-strong costs
    out["aiq_cost_range"] = [lo, hi]
    if hi > lo:
        # Mixing single models (RouterBench's zero-router) over the same range.
        out["models_hull_aiq"] = metrics.aiq(np.array([p["cost"] for p in points.values()]),
                                             np.array([p["quality"] for p in points.values()]),
                                             (lo, hi))
        for entry in routers.values():
            entry["aiq"] = metrics.aiq(np.array(entry["curve"]["cost"]),
                                       np.array(entry["curve"]["quality"]), (lo, hi))
    return out


def write_results(results: dict[str, Any], output: Path) -> list[Path]:
    """`<benchmark>.json`, `<benchmark>.png` and, with costs, `<benchmark>_cost.png`."""
    from switchllm.evaluation.plots import plot_cost_quality, plot_quality

    name = results["benchmark"]
    paths = [output / f"{name}.json", output / f"{name}.png"]
    paths[0].write_text(json.dumps(results, indent=1, allow_nan=True) + "\n")
    plot_quality(results, paths[1])
    if "cost" in results and results["routers"]:
        paths.append(output / f"{name}_cost.png")
        plot_cost_quality(results, paths[2])
    return paths
