"""`switchllm eval --n-models`: Platt calibration, reliability, expected cost, max-quality per
task on synthetic data whose answer is known, and the command end to end on RouterBench."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from switchllm.cli import main
from switchllm.evaluation.n_model_eval import (
    CostModel,
    Split,
    max_quality_by_task,
    reliability,
)
from switchllm.routers.choice import (
    calibrated_quality,
    fit_quality_calibration_from_scores,
    platt_fit,
)
from tests.test_choice import MODELS, TableRouter


def test_platt_recovers_a_known_logistic_map_and_stays_monotone() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    y = (rng.uniform(size=x.size) < 1 / (1 + np.exp(-(2.0 * x - 1.0)))).astype(float)
    a, b = platt_fit(x, y)
    assert a == pytest.approx(2.0, abs=0.1) and b == pytest.approx(-1.0, abs=0.1)
    # scores that predict nothing (or the opposite) get a flat map, never a decreasing one
    assert platt_fit(x, 1.0 - (x > 0))[0] == 0.0


def test_platt_calibration_on_a_card_is_monotone_and_in_unit_range() -> None:
    router = TableRouter()
    prompts = ["hard one", "medium one", "easy one"] * 40
    # big always right; mid right on medium and easy prompts; small only on easy ones
    truth = {"hard one": [1, 0, 0], "medium one": [1, 1, 0], "easy one": [1, 1, 1]}
    quality = np.array([truth[p] for p in prompts], dtype=float)
    calibration = fit_quality_calibration_from_scores(router, prompts, quality, MODELS,
                                                      method="platt")
    assert calibration["method"] == "platt" and set(calibration["models"]) == set(MODELS)
    router.card_info["quality_calibration"] = calibration
    grid = np.linspace(-4, 4, 50)[:, None].repeat(3, axis=1)
    q = calibrated_quality(router, grid, MODELS)
    assert np.all(np.diff(q, axis=0) >= 0) and q.min() >= 0 and q.max() <= 1
    # on hard prompts only big is right: it must come first
    scores = router.model_scores(["hard one"])
    hard = calibrated_quality(router, scores, MODELS)[0]
    assert hard[0] > hard[1] and hard[0] > hard[2]
    with pytest.raises(Exception, match="unknown calibration method"):
        fit_quality_calibration_from_scores(router, prompts, quality, MODELS, method="beta")


def test_reliability_bins_and_ece() -> None:
    predicted = np.array([0.05, 0.05, 0.95, 0.95])
    assert reliability(predicted, np.array([0.0, 0.1, 1.0, 0.9]))["ece"] == pytest.approx(0.0)
    off = reliability(predicted, np.array([1.0, 1.0, 0.0, 0.0]))
    assert off["ece"] == pytest.approx(0.95)
    assert [b["count"] for b in off["bins"]] == [2, 2]


def test_cost_model_learns_cost_from_prompt_length() -> None:
    prompts = ["x" * n for n in range(4, 400, 4)]  # 1..99 tokens
    tokens = np.arange(1, 100, dtype=float)
    cost = np.stack([1e-3 + 2e-5 * tokens, np.full_like(tokens, 1e-4)], axis=1)
    predicted = CostModel(prompts, cost).predict(["x" * 800, "x" * 4])
    assert predicted[0] == pytest.approx([1e-3 + 2e-5 * 200, 1e-4])
    assert predicted[1] == pytest.approx([1e-3 + 2e-5, 1e-4])


def test_max_quality_by_task_against_best_single_and_oracle() -> None:
    quality = np.array([[1, 0], [1, 0], [0, 1], [0, 1]], dtype=float)
    data = Split(["a", "b", "c", "d"], ["m1", "m2"], quality, np.ones((4, 2)),
                 ["t1", "t1", "t2", "t2"])
    perfect = quality.copy()
    out = max_quality_by_task(perfect, np.ones((4, 2)), data)
    assert out["t1"] == {"prompts": 2, "router": 1.0, "best_single": 1.0,
                         "best_single_model": "m1", "oracle": 1.0}
    wrong = max_quality_by_task(1 - quality, np.ones((4, 2)), data)
    assert wrong["t2"]["router"] == 0.0 and wrong["t2"]["best_single_model"] == "m2"


def test_eval_n_models_on_routerbench_end_to_end(tmp_path: Path,
                                                 capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--n-models", "--benchmark", "routerbench",
                 "--routers", "random,knn", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "routerbench with 11 models: 953 prompts" in out
    report = json.loads((tmp_path / "routerbench_n_models.json").read_text())
    for name in ("routerbench_n_models.png", "routerbench_n_models_reliability.png"):
        assert (tmp_path / name).stat().st_size > 10_000
    assert report["mode"] == "held-out" and len(report["models"]) == 11
    knn, rnd = report["routers"]["knn"], report["routers"]["random"]
    # a trained router lies above the Zero-router hull over most of the cost range; random
    # choices never do, and max-quality mode with random qualities is far below the best model
    assert knn["above_zero_share"] > 0.8 > rnd["above_zero_share"]
    assert knn["aiq"] > report["zero_router"]["aiq"]
    assert knn["max_quality_gain_points"] > rnd["max_quality_gain_points"] + 10
    assert set(knn["max_quality_by_task"]) == {"arc-challenge", "mbpp", "winogrande"}
    assert 0 <= knn["reliability"]["ece"] < 0.15 < rnd["reliability"]["ece"]
    assert report["chosen_on_validation"] == "knn"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "mmlu"], "--n-models needs a benchmark with a train split"),
        (["--routers", "nonsense"], "'nonsense' is not one"),
        (["--leave-out"], "drop --leave-out"),
        (["--cv", "1"], "--cv needs at least 2 folds"),
    ],
)
def test_n_models_bad_arguments_fail_with_one_line(argv: list[str], message: str,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--n-models", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_knn_quality_memory_scores_measured_quality_and_persists(tmp_path: Path) -> None:
    from switchllm.data.battles import Battles
    from switchllm.routers import load_router
    from switchllm.routers.knn import KNNRouter

    rng = np.random.default_rng(0)
    centres = rng.normal(size=(2, 384))
    vectors = np.concatenate([centres[0] + 0.05 * rng.normal(size=(40, 384)),
                              centres[1] + 0.05 * rng.normal(size=(40, 384))])
    vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
    prompts = [f"easy question {i}" for i in range(40)] + [f"hard question {i}"
                                                           for i in range(40)]
    # easy prompts: every model is right; hard ones: only "x"
    quality = np.array([[1.0, 1.0, 1.0]] * 40 + [[1.0, 0.0, 0.0]] * 40)
    battles = Battles.from_scores(prompts, ["x", "y", "z"], quality)
    router = KNNRouter(k=8, text_features=0.0).fit(battles, embeddings=vectors[
        [prompts.index(p) for p in battles.prompts]])
    queries = np.stack([vectors[0], vectors[79]])
    relative = router.model_scores_from_embeddings(queries)
    # battle results: on easy prompts all tie, so they say nothing of being right
    assert np.ptp(relative[0]) < 0.1 and relative[0].max() < 0.6
    row = {p: i for i, p in enumerate(prompts)}
    router.remember_quality(quality[[row[p] for p in battles.prompts]])
    measured = router.model_scores_from_embeddings(queries)
    assert measured[0] == pytest.approx([1.0, 1.0, 1.0], abs=0.15)  # all right on easy ones
    assert measured[1][0] > 0.85 > 0.15 > measured[1][1]
    with pytest.raises(ValueError, match="shape"):
        router.remember_quality(quality[:3])
    loaded = load_router(str(router.save(tmp_path / "card")))
    np.testing.assert_allclose(loaded.model_scores_from_embeddings(queries), measured,
                               atol=1e-3)
