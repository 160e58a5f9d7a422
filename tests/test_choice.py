"""Choosing among N models: objectives on synthetic routers whose right answer is known,
calibration (monotone, in [0, 1]), and the documented behaviour of pairwise-only routers."""

from __future__ import annotations

import numpy as np
import pytest

from switchllm.data.battles import Battles
from switchllm.routers.base import Router
from switchllm.routers.choice import (
    ChoiceError,
    ModelChooser,
    Objective,
    calibrated_quality,
    fit_quality_calibration,
    isotonic_knots,
    rank_candidates,
)
from switchllm.routers.random import RandomRouter
from tests.serving_fixtures import KeywordRouter

MODELS = ["big", "mid", "small"]
PRICES_IN = {"big": 10.0, "mid": 1.0, "small": 0.1}
PRICES_OUT = {"big": 30.0, "mid": 3.0, "small": 0.2}


class TableRouter(Router):
    """Scores a model by a fixed table per prompt keyword: 'hard' prompts only big is good at,
    'medium' ones big and mid, anything else all three about equally."""

    kind = "table"

    def __init__(self) -> None:
        super().__init__()
        self.models = list(MODELS)

    def model_scores(self, prompts):  # noqa: ANN001, ANN201
        rows = []
        for p in prompts:
            if "hard" in p:
                rows.append([3.0, -1.0, -3.0])
            elif "medium" in p:
                rows.append([2.0, 1.9, -2.0])
            else:
                rows.append([0.02, 0.01, 0.0])
        return np.array(rows)

    def win_rate(self, prompts, strong=None, weak=None):  # noqa: ANN001, ANN201
        s = self.model_scores(prompts)
        a, b = self.models.index(strong or "big"), self.models.index(weak or "small")
        return 1 / (1 + np.exp(-(s[:, a] - s[:, b])))


def chooser(objective: Objective, router: Router | None = None,
            models: list[str] = MODELS) -> ModelChooser:
    return ModelChooser(router or TableRouter(), models, PRICES_IN, PRICES_OUT, objective,
                        output_tokens={"big": 100, "mid": 100, "small": 100})


PROMPTS = ["a hard proof", "a medium essay", "say hi"]


def test_max_quality_picks_the_best_model_and_ranks_the_rest() -> None:
    choices = chooser(Objective()).choose(PROMPTS)
    assert [c.model for c in choices] == ["big", "big", "big"]
    assert choices[0].order == ("big", "mid", "small")
    assert all(c.best_model == "big" for c in choices)


def test_quality_target_takes_the_cheapest_model_within_epsilon() -> None:
    choices = chooser(Objective("quality_target", 0.05)).choose(PROMPTS)
    assert [c.model for c in choices] == ["big", "mid", "small"]
    # fallback: eligible cheapest first, then the others by quality
    assert choices[1].order == ("mid", "big", "small")


def test_willingness_to_pay_trades_quality_against_dollars() -> None:
    # lambda 0: max quality; huge lambda: always the cheapest model
    assert [c.model for c in chooser(Objective("willingness_to_pay", 0)).choose(PROMPTS)] == [
        "big"] * 3
    cheap = chooser(Objective("willingness_to_pay", 1e9)).choose(PROMPTS)
    assert [c.model for c in cheap] == ["small"] * 3
    # in between: pay for big only where it is much better
    mixed = chooser(Objective("willingness_to_pay", 200)).choose(PROMPTS)
    assert [c.model for c in mixed] == ["big", "mid", "small"]
    q, cost = mixed[2].quality, mixed[2].expected_cost
    assert cost["big"] > cost["mid"] > cost["small"] > 0
    assert all(0 <= v <= 1 for v in q.values())


def test_expected_cost_counts_input_and_output_tokens() -> None:
    cost = chooser(Objective()).expected_costs([1000])[0]
    assert cost[0] == pytest.approx((1000 * 10.0 + 100 * 30.0) / 1e6)


def test_rank_ties_go_to_the_cheaper_model() -> None:
    order = rank_candidates(np.array([[0.5, 0.5]]), np.array([[2.0, 1.0]]), Objective())
    assert order.tolist() == [[1, 0]]


@pytest.mark.parametrize("spec", [{"willingness_to_pay": -1}, {"quality_target": "x"},
                                  {"fastest": 1}, {"max_quality": True, "x": 1}, 3])
def test_bad_objectives_are_refused(spec) -> None:  # noqa: ANN001
    with pytest.raises(ChoiceError):
        Objective.parse(spec)


def test_objective_parse() -> None:
    assert Objective.parse({"willingness_to_pay": 200}) == Objective("willingness_to_pay", 200)
    assert Objective.parse({"quality_target": 0.02}).value == 0.02
    assert Objective.parse({"max_quality": True}) == Objective()


def test_unknown_models_and_pairwise_routers() -> None:
    with pytest.raises(ChoiceError, match="cannot score 'other'"):
        chooser(Objective(), models=["big", "other"])
    keyword = KeywordRouter(keywords=["proof"])
    with pytest.raises(ChoiceError, match="answers pairs only"):
        chooser(Objective(), router=keyword)
    # two candidates: the pricier one's quality is the win rate
    pair = chooser(Objective("quality_target", 0.0), router=keyword, models=["small", "big"])
    got = pair.choose(["a proof please", "hello"])
    assert [c.model for c in got] == ["big", "small"]
    assert got[0].quality["big"] == pytest.approx(0.9)
    # random with N models: uniform random qualities, every candidate chosen sometimes
    rand = chooser(Objective(), router=RandomRouter(seed=1))
    picked = {c.model for c in rand.choose(["x"] * 60)}
    assert picked == set(MODELS)


def test_isotonic_knots_are_monotone_and_in_unit_range() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=2000)
    y = (rng.uniform(size=2000) < 1 / (1 + np.exp(-2 * x))).astype(float)
    kx, ky = isotonic_knots(x, y)
    assert np.all(np.diff(kx) >= 0) and np.all(np.diff(ky) >= 0)
    assert 0 <= min(ky) and max(ky) <= 1 and len(kx) <= 64
    # close to the true curve in the middle
    assert np.interp(0.0, kx, ky) == pytest.approx(0.5, abs=0.08)


def test_quality_calibration_from_battles() -> None:
    router = TableRouter()
    rng = np.random.default_rng(0)
    records = []
    for i in range(300):
        kind = ["hard", "medium", "easy"][i % 3]
        prompt = f"{kind} {i}"
        scores = router.model_scores([prompt])[0]
        for a, b in ((0, 1), (0, 2), (1, 2)):
            p = 1 / (1 + np.exp(-(scores[a] - scores[b])))
            records.append((prompt, MODELS[a], MODELS[b], float(rng.uniform() < p)))
    battles = Battles.from_records(records)
    calibration = fit_quality_calibration(router, battles)
    assert set(calibration["models"]) == set(MODELS)
    router.card_info["quality_calibration"] = calibration
    grid = np.linspace(-4, 4, 81)[:, None].repeat(3, axis=1)
    quality = calibrated_quality(router, grid, MODELS)
    assert np.all(np.diff(quality, axis=0) >= 0)
    assert quality.min() >= 0 and quality.max() <= 1
    # a calibrated chooser still sends hard prompts to big and easy ones cheap
    choices = chooser(Objective("quality_target", 0.05), router=router).choose(PROMPTS)
    assert choices[0].model == "big" and choices[2].model == "small"


def test_n_model_evaluation_against_the_zero_router_and_oracle() -> None:
    from switchllm.evaluation.n_models import compare, sweep

    rng = np.random.default_rng(0)
    n = 400
    hard = rng.uniform(size=n) < 0.5
    # big is right everywhere, small only on easy prompts; costs 10 vs 1 per query
    quality = np.stack([np.ones(n), (~hard).astype(float)], axis=1)
    cost = np.tile([10.0, 1.0], (n, 1))
    perfect = quality * 0.8 + 0.1  # a router that knows which prompts are hard
    c, q = sweep(perfect, cost, quality, cost)
    report = compare(["big", "small"], quality, cost, {"perfect": (c, q)})
    entry = report["routers"]["perfect"]
    assert report["oracle"]["quality"] == 1.0
    assert report["oracle"]["cost"] == pytest.approx(5.5, abs=0.5)
    assert entry["cost_to_match_best_single"] == pytest.approx(report["oracle"]["cost"])
    assert entry["aiq"] > report["zero_router"]["aiq"]
    assert entry["above_zero_share"] > 0.95
    assert entry["max_quality"] == 1.0
