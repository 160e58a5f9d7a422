"""Routing metrics, computed as RouteLLM computes them (pure numpy).

A router gives each prompt a strong win rate. For a threshold t, a prompt goes to the strong model
when its win rate is >= t; the routed quality is the mean of the chosen model's quality. Thresholds
are quantiles of the win rates at evenly spaced levels 0..1 (RouteLLM: 11 levels, `pd.qcut`
edges), except that the highest one uses `>` so that the curve reaches 0% strong calls. Sorting
the points by strong-call share gives the quality-vs-strong-share curve, from which:

- PGR (performance gap recovered) at a point = (quality - weak) / (strong - weak)
- AUC = trapezoid area under quality over strong share (share as a fraction 0..1)
- APGR = (AUC - weak area) / (strong area - weak area) = the trapezoid area under PGR
- CPT(x) = the smallest strong share at which PGR reaches x, walking the piecewise-linear curve
  (RouteLLM's `np.interp` over the curve is the same whenever the curve is increasing)

`routing_curve` defaults to 101 levels: the finer grid is what the reported metrics use;
`ROUTELLM_LEVELS` (11) reproduces RouteLLM's own numbers. Routing cost (dollars per query) and
RouterBench's AIQ (area under the non-decreasing convex hull of cost-quality points, divided by
the cost range) cover benchmarks with costs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

ROUTELLM_LEVELS = 11  # RouteLLM: deciles of the win rates
REPORT_LEVELS = 101  # the grid behind every reported metric
CPT_TARGETS = (0.2, 0.5, 0.8)
RANDOM_SEEDS = tuple(range(10))


@dataclass(frozen=True)
class Curve:
    """Routing curve points sorted by strong share. `strong_share` is a fraction in [0, 1];
    `threshold` is the win-rate threshold behind each point (None for reference curves);
    `cost` the mean dollar cost per query (None where the benchmark has no costs)."""

    strong_share: np.ndarray
    quality: np.ndarray
    threshold: np.ndarray | None = None
    cost: np.ndarray | None = None

    def to_dict(self, digits: int = 6) -> dict[str, list[float]]:
        out = {"strong_pct": (self.strong_share * 100).round(digits).tolist(),
               "quality": self.quality.round(digits).tolist()}
        if self.threshold is not None:
            out["threshold"] = self.threshold.round(digits).tolist()
        if self.cost is not None:
            out["cost"] = self.cost.round(12).tolist()
        return out


def routing_curve(
    win_rates: np.ndarray, q_strong: np.ndarray, q_weak: np.ndarray,
    levels: int = REPORT_LEVELS, c_strong: np.ndarray | None = None,
    c_weak: np.ndarray | None = None,
) -> Curve:
    """Strong share and routed quality (and cost) at thresholds = win-rate quantiles."""
    win_rates = np.asarray(win_rates, dtype=np.float64)
    q_strong, q_weak = np.asarray(q_strong, float), np.asarray(q_weak, float)
    if not (win_rates.shape == q_strong.shape == q_weak.shape) or win_rates.ndim != 1:
        raise ValueError("win rates and qualities must be 1-D arrays of the same length")
    if len(win_rates) == 0:
        raise ValueError("no prompts to evaluate")
    if np.isnan(win_rates).any():
        raise ValueError("win rates contain NaN")
    thresholds = np.quantile(win_rates, np.linspace(0.0, 1.0, levels))
    strong = win_rates[None, :] >= thresholds[:, None]
    strong[-1] = win_rates > thresholds[-1]  # the top threshold routes nothing to strong
    share = strong.mean(axis=1)
    quality = np.where(strong, q_strong, q_weak).mean(axis=1)
    cost = None
    if c_strong is not None and c_weak is not None:
        cost = np.where(strong, c_strong, c_weak).mean(axis=1)
    order = np.argsort(share, kind="stable")
    return Curve(share[order], quality[order], thresholds[order],
                 None if cost is None else cost[order])


def pgr(quality: np.ndarray | float, weak: float, strong: float) -> np.ndarray:
    """Performance gap recovered: 0 at the weak model's quality, 1 at the strong model's."""
    if strong == weak:
        raise ValueError("strong and weak model have the same quality: PGR is undefined")
    return (np.asarray(quality, dtype=float) - weak) / (strong - weak)


def auc(curve: Curve) -> float:
    """Trapezoid area under quality over strong share (fraction)."""
    return float(np.trapezoid(curve.quality, curve.strong_share))


def apgr(curve: Curve, weak: float, strong: float) -> float:
    """Average PGR: the curve's area measured between the weak and the strong model's areas."""
    span = float(curve.strong_share[-1] - curve.strong_share[0])
    if span == 0:
        raise ValueError("the curve has a single strong share: APGR is undefined")
    return (auc(curve) - weak * span) / ((strong - weak) * span)


def cpt(curve: Curve, weak: float, strong: float, target: float) -> float:
    """Call-performance threshold: the smallest strong share (fraction) at which the curve's
    PGR reaches `target`, interpolating linearly between points. NaN if never reached."""
    gains = pgr(curve.quality, weak, strong)
    reached = np.nonzero(gains >= target)[0]
    if len(reached) == 0:
        return float("nan")
    i = int(reached[0])
    if i == 0:
        return float(curve.strong_share[0])
    x0, x1 = curve.strong_share[i - 1], curve.strong_share[i]
    y0, y1 = gains[i - 1], gains[i]
    return float(x0 + (target - y0) * (x1 - x0) / (y1 - y0))


def summarize(curve: Curve, weak: float, strong: float) -> dict[str, float]:
    """The reported metrics: APGR, CPT(20/50/80%) as strong-call percentages, and AUC."""
    out = {"apgr": apgr(curve, weak, strong)}
    for target in CPT_TARGETS:
        out[f"cpt{round(target * 100)}"] = cpt(curve, weak, strong, target) * 100
    out["auc"] = auc(curve)
    return out


def random_reference(
    q_strong: np.ndarray, q_weak: np.ndarray, levels: int = REPORT_LEVELS,
    seeds: Sequence[int] = RANDOM_SEEDS,
) -> tuple[Curve, dict[str, float]]:
    """The random router (uniform win rates) over several seeds: the pointwise mean curve and
    the mean of each seed's metrics (plus `apgr_std`)."""
    weak, strong = float(np.mean(q_weak)), float(np.mean(q_strong))
    curves = [routing_curve(np.random.default_rng(seed).uniform(size=len(q_strong)),
                            q_strong, q_weak, levels) for seed in seeds]
    metrics = [summarize(c, weak, strong) for c in curves]
    mean = {k: float(np.nanmean([m[k] for m in metrics])) for k in metrics[0]}
    mean["apgr_std"] = float(np.std([m["apgr"] for m in metrics]))
    curve = Curve(np.mean([c.strong_share for c in curves], axis=0),
                  np.mean([c.quality for c in curves], axis=0))
    return curve, mean


def oracle_curve(q_strong: np.ndarray, q_weak: np.ndarray,
                 levels: int = REPORT_LEVELS) -> Curve:
    """The best achievable routing for each budget of strong calls (x = budget as a share):
    strong only where it is strictly better, largest gains first."""
    q_strong, q_weak = np.asarray(q_strong, float), np.asarray(q_weak, float)
    n = len(q_strong)
    gains = np.sort((q_strong - q_weak)[q_strong > q_weak])[::-1]
    cumulative = np.concatenate([[0.0], np.cumsum(gains)])
    budgets = np.linspace(0.0, 1.0, levels)
    calls = np.minimum(np.floor(budgets * n + 1e-9).astype(int), len(gains))
    return Curve(budgets, q_weak.mean() + cumulative[calls] / n)


# ---- cost-quality ---------------------------------------------------------------------------

def non_decreasing_convex_hull(costs: np.ndarray, qualities: np.ndarray
                               ) -> tuple[np.ndarray, np.ndarray]:
    """Vertices of the upper convex hull of (cost, quality) points, cut at the best quality:
    the quality reachable by mixing the points, never decreasing as the budget grows
    (RouterBench). Beyond the last vertex the hull stays flat."""
    costs, qualities = np.asarray(costs, float), np.asarray(qualities, float)
    order = np.lexsort((-qualities, costs))  # by cost; for equal cost, best quality first
    hull: list[tuple[float, float]] = []
    for c, q in zip(costs[order], qualities[order], strict=True):
        if hull and c == hull[-1][0]:
            continue  # same cost, worse quality
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            # drop the middle point when it lies on or below the line from hull[-2] to (c, q)
            if (q2 - q1) * (c - c1) <= (q - q1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append((c, q))
    hull_c = np.array([p[0] for p in hull])
    hull_q = np.array([p[1] for p in hull])
    best = int(np.argmax(hull_q))
    return hull_c[: best + 1], hull_q[: best + 1]


def aiq(costs: np.ndarray, qualities: np.ndarray, cost_range: tuple[float, float]) -> float:
    """RouterBench's AIQ: the mean of the non-decreasing convex hull over `cost_range`
    (area divided by the range's width)."""
    lo, hi = cost_range
    if not hi > lo:
        raise ValueError(f"empty cost range {cost_range}")
    hull_c, hull_q = non_decreasing_convex_hull(costs, qualities)
    if lo < hull_c[0] - 1e-15:
        raise ValueError(f"cost range starts at {lo}, below the cheapest point {hull_c[0]}")
    inside = hull_c[(hull_c > lo) & (hull_c < hi)]
    xs = np.concatenate([[lo], inside, [hi]])
    return float(np.trapezoid(np.interp(xs, hull_c, hull_q), xs) / (hi - lo))
