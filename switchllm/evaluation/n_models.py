"""Evaluating a choice among N models: sweep willingness to pay (lambda), and compare the
router's cost-quality frontier with every single model, the Zero router (the convex hull of the
single models: mixing them at random) and the oracle (each prompt's best model, cheapest first).

All functions take arrays (n prompts, k models): the router's predicted quality and expected
cost (what it decides on), and the true quality and cost (what the choice then gets).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from switchllm.evaluation.metrics import aiq, non_decreasing_convex_hull
from switchllm.routers.choice import Objective, rank_candidates

DEFAULT_LAMBDAS = tuple(np.concatenate([[0.0], np.geomspace(1.0, 1e6, 61)]).tolist())


def sweep(predicted: np.ndarray, expected_cost: np.ndarray, quality: np.ndarray,
          cost: np.ndarray, lambdas: Sequence[float] = DEFAULT_LAMBDAS
          ) -> tuple[np.ndarray, np.ndarray]:
    """(average $/query, average quality) of choosing by quality - lambda * expected cost,
    one point per lambda."""
    rows = np.arange(len(quality))
    costs, qualities = [], []
    for lam in lambdas:
        chosen = rank_candidates(predicted, expected_cost,
                                 Objective("willingness_to_pay", lam))[:, 0]
        costs.append(cost[rows, chosen].mean())
        qualities.append(quality[rows, chosen].mean())
    return np.array(costs), np.array(qualities)


def oracle_point(quality: np.ndarray, cost: np.ndarray) -> tuple[float, float]:
    """Each prompt's best model, the cheapest among equals."""
    chosen = np.lexsort((cost, -quality), axis=1)[:, 0]
    rows = np.arange(len(quality))
    return float(cost[rows, chosen].mean()), float(quality[rows, chosen].mean())


def hull_at(costs: np.ndarray, qualities: np.ndarray, at: np.ndarray) -> np.ndarray:
    """The non-decreasing convex hull of the points, evaluated at costs `at` (flat beyond its
    ends; below the cheapest point, NaN)."""
    hc, hq = non_decreasing_convex_hull(costs, qualities)
    out = np.interp(at, hc, hq)
    return np.where(np.asarray(at) < hc[0] - 1e-15, np.nan, out)


def compare(models: Sequence[str], quality: np.ndarray, cost: np.ndarray,
            routers: dict[str, tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """The report: single models, Zero router, oracle, and per router (its sweep's points):
    AIQ over [cheapest, priciest single model], quality at the best single model's cost, the
    cost to match the best single model's quality, and the share of the cost range where the
    router's frontier is above the Zero router's hull."""
    single_c, single_q = cost.mean(axis=0), quality.mean(axis=0)
    lo, hi = float(single_c.min()), float(single_c.max())
    best = int(np.argmax(single_q))
    grid = np.linspace(lo, hi, 201)
    zero = hull_at(single_c, single_q, grid)
    report: dict[str, Any] = {
        "models": {m: {"cost": float(c), "quality": float(q)}
                   for m, c, q in zip(models, single_c, single_q, strict=True)},
        "best_single": {"model": models[best], "cost": float(single_c[best]),
                        "quality": float(single_q[best])},
        "cost_range": [lo, hi],
        "zero_router": {"aiq": aiq(single_c, single_q, (lo, hi))},
        "oracle": dict(zip(("cost", "quality"), oracle_point(quality, cost), strict=True)),
        "routers": {},
    }
    for name, (rc, rq) in routers.items():
        # the router's frontier: its sweep points mixed with the single models (a router can
        # always fall back to sending everything to one model)
        all_c, all_q = np.concatenate([rc, single_c]), np.concatenate([rq, single_q])
        frontier = hull_at(all_c, all_q, grid)
        above = np.nanmean(frontier > zero + 1e-9)
        reach = np.flatnonzero(rq >= single_q[best] - 1e-12)
        report["routers"][name] = {
            "aiq": aiq(all_c, all_q, (lo, hi)),
            "quality_at_best_single_cost": float(hull_at(all_c, all_q,
                                                         np.array([single_c[best]]))[0]),
            "cost_to_match_best_single": float(rc[reach].min()) if len(reach) else None,
            "cost_share_of_best_single": (float(rc[reach].min() / single_c[best])
                                          if len(reach) else None),
            "above_zero_share": float(above),
            "max_quality": float(rq[0]) if len(rq) else None,  # lambda 0 comes first
            "points": {"cost": rc.round(8).tolist(), "quality": rq.round(6).tolist()},
        }
    return report


def plot(report: dict[str, Any], title: str, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    single = report["models"]
    cs = np.array([v["cost"] for v in single.values()])
    qs = np.array([v["quality"] for v in single.values()])
    ax.scatter(cs, qs, color="black", zorder=3, label="single models")
    for name, c, q in zip(single, cs, qs, strict=True):
        ax.annotate(name.split("/")[-1], (c, q), fontsize=7, xytext=(3, 3),
                    textcoords="offset points")
    hc, hq = non_decreasing_convex_hull(cs, qs)
    ax.plot(np.append(hc, cs.max()), np.append(hq, hq[-1]), "k--", label="Zero router (hull)")
    for name, entry in report["routers"].items():
        pts = entry["points"]
        order = np.argsort(pts["cost"])
        ax.plot(np.array(pts["cost"])[order], np.array(pts["quality"])[order], "o-",
                markersize=3, label=f"{name} (AIQ {entry['aiq']:.3f})")
    ax.scatter([report["oracle"]["cost"]], [report["oracle"]["quality"]], marker="*", s=150,
               color="gold", edgecolor="black", zorder=4, label="oracle")
    ax.set_xscale("log")
    ax.set_xlabel("average $ per query (log)")
    ax.set_ylabel("quality")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
