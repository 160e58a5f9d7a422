"""Routing metrics on small cases computed by hand (the arithmetic is in each test)."""

import numpy as np
import pytest

from switchllm.evaluation import metrics

# 4 prompts. Strong is right on prompts 0, 1, 2; weak only on prompt 1.
WIN_RATES = np.array([0.1, 0.4, 0.6, 0.9])
Q_STRONG = np.array([1.0, 1.0, 1.0, 0.0])
Q_WEAK = np.array([0.0, 1.0, 0.0, 0.0])
WEAK, STRONG = 0.25, 0.75  # mean qualities


def small_curve() -> metrics.Curve:
    return metrics.routing_curve(WIN_RATES, Q_STRONG, Q_WEAK, levels=5)


def test_routing_curve_thresholds_shares_and_quality() -> None:
    curve = small_curve()
    # quantiles at 0, .25, .5, .75, 1 (linear, positions 0, .75, 1.5, 2.25, 3):
    # 0.1, 0.1 + .75*.3 = 0.325, 0.4 + .5*.2 = 0.5, 0.6 + .25*.3 = 0.675, 0.9
    assert curve.threshold[::-1] == pytest.approx([0.1, 0.325, 0.5, 0.675, 0.9])
    # >= 0.1: all strong; >= .325: prompts 1-3; >= .5: 2-3; >= .675: 3; > 0.9 (top): none
    assert curve.strong_share == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    # none strong: weak mean .25; {3}: [0,1,0,0] .25; {2,3}: [0,1,1,0] .5;
    # {1,2,3}: [0,1,1,0] .5; all: strong mean .75
    assert curve.quality == pytest.approx([0.25, 0.25, 0.5, 0.5, 0.75])


def test_auc_apgr_and_pgr() -> None:
    curve = small_curve()
    # trapezoids of width .25: (.25+.25)/2 + (.25+.5)/2 + (.5+.5)/2 + (.5+.75)/2 = 1.75 -> .4375
    assert metrics.auc(curve) == pytest.approx(0.4375)
    # APGR = (.4375 - .25) / (.75 - .25) = .375
    assert metrics.apgr(curve, WEAK, STRONG) == pytest.approx(0.375)
    assert metrics.pgr(curve.quality, WEAK, STRONG) == pytest.approx([0, 0, 0.5, 0.5, 1.0])
    with pytest.raises(ValueError):
        metrics.pgr(0.5, 0.4, 0.4)


def test_cpt_is_first_crossing_interpolated() -> None:
    curve = small_curve()  # PGR [0, 0, .5, .5, 1] at shares [0, .25, .5, .75, 1]
    # 20%: between (.25, 0) and (.5, .5): .25 + .2/.5 * .25 = .35
    assert metrics.cpt(curve, WEAK, STRONG, 0.2) == pytest.approx(0.35)
    # 50%: reached exactly at share .5 (not at .75, where PGR is also .5)
    assert metrics.cpt(curve, WEAK, STRONG, 0.5) == pytest.approx(0.5)
    # 80%: between (.75, .5) and (1, 1): .75 + .3/.5 * .25 = .9
    assert metrics.cpt(curve, WEAK, STRONG, 0.8) == pytest.approx(0.9)
    assert np.isnan(metrics.cpt(curve, WEAK, STRONG, 1.5))
    summary = metrics.summarize(curve, WEAK, STRONG)
    assert summary == pytest.approx({"apgr": 0.375, "cpt20": 35.0, "cpt50": 50.0,
                                     "cpt80": 90.0, "auc": 0.4375})


def test_routellm_decile_grid_has_11_points_spanning_0_to_100() -> None:
    rates = np.random.default_rng(1).uniform(size=1000)
    curve = metrics.routing_curve(rates, np.ones(1000), np.zeros(1000),
                                  levels=metrics.ROUTELLM_LEVELS)
    assert len(curve.strong_share) == 11
    assert curve.strong_share[0] == 0.0 and curve.strong_share[-1] == 1.0
    # continuous rates: the threshold at quantile q keeps the top (1 - q) share, to one prompt
    assert curve.strong_share == pytest.approx(np.linspace(0, 1, 11), abs=1e-3)


def test_oracle_uses_strong_only_where_strictly_better() -> None:
    # gains strong - weak: [1, 0, 1, 0] -> 2 prompts worth a strong call
    curve = metrics.oracle_curve(Q_STRONG, Q_WEAK, levels=5)
    # budgets 0, .25, .5, .75, 1 -> calls 0, 1, 2, 2, 2 -> .25 + [0, .25, .5, .5, .5]
    assert curve.quality == pytest.approx([0.25, 0.5, 0.75, 0.75, 0.75])
    # AUC = .25 * ((.25+.5)/2 + (.5+.75)/2 + .75 + .75) = .625; APGR = (.625-.25)/.5 = .75
    assert metrics.apgr(curve, WEAK, STRONG) == pytest.approx(0.75)


def test_random_reference_is_the_diagonal() -> None:
    rng = np.random.default_rng(12345)  # not one of the reference seeds 0-9
    q_strong = (rng.uniform(size=5000) < 0.8).astype(float)
    q_weak = (rng.uniform(size=5000) < 0.6).astype(float)
    curve, summary = metrics.random_reference(q_strong, q_weak)
    assert summary["apgr"] == pytest.approx(0.5, abs=0.02)
    assert summary["cpt50"] == pytest.approx(50, abs=3)
    assert summary["apgr_std"] > 0  # the seeds differ
    assert curve.quality[0] == pytest.approx(q_weak.mean())
    assert curve.quality[-1] == pytest.approx(q_strong.mean())


def test_cost_curve_follows_the_routing() -> None:
    curve = metrics.routing_curve(WIN_RATES, Q_STRONG, Q_WEAK, levels=5,
                                  c_strong=np.full(4, 10.0), c_weak=np.full(4, 1.0))
    # share s strong at $10, the rest at $1: 1 + 9 s
    assert curve.cost == pytest.approx(1 + 9 * curve.strong_share)


def test_non_decreasing_convex_hull_and_aiq() -> None:
    costs = np.array([1.0, 2.0, 3.0, 4.0, 2.0])
    quality = np.array([0.5, 0.6, 0.9, 0.8, 0.55])
    hull_c, hull_q = metrics.non_decreasing_convex_hull(costs, quality)
    # (2, .6) lies below the chord (1, .5)-(3, .9) (.7 at cost 2); (4, .8) is past the best
    assert hull_c.tolist() == [1.0, 3.0] and hull_q.tolist() == [0.5, 0.9]
    # area over [1, 4]: (.5 + .9)/2 * 2 = 1.4, then flat .9 * 1 -> 2.3 / 3
    assert metrics.aiq(costs, quality, (1.0, 4.0)) == pytest.approx(2.3 / 3)
    # over [2, 3]: the chord from .7 to .9 -> mean .8
    assert metrics.aiq(costs, quality, (2.0, 3.0)) == pytest.approx(0.8)
    with pytest.raises(ValueError):
        metrics.aiq(costs, quality, (0.5, 3.0))
