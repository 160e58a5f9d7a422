"""The ensemble router on a real MMLU sample: stacking weights, frozen and freshly trained
members, cards that name their members, and the train command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from routers_fixtures import MMLU_SAMPLE, STRONG, WEAK, mmlu_battles, mmlu_split

from switchllm.cli import main
from switchllm.data.battles import Battles
from switchllm.errors import CardError, SwitchLLMError, UnknownModelError
from switchllm.routers import load_router, router_class
from switchllm.routers.ensemble import EnsembleRouter, fit_stacking_weights, logit
from switchllm.training import apgr, pair_gains, split_by_prompt

FAST_MF = {"epochs": 10}


def test_stacking_weights_recover_a_known_combination() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 3))
    y = (rng.random(20000) < 1 / (1 + np.exp(-(x @ np.array([1.5, 0.5, 0.0]))))).astype(float)
    w = fit_stacking_weights(x, y, np.ones(len(y)), l2=1.0)
    np.testing.assert_allclose(w, [1.5, 0.5, 0.0], atol=0.08)


def test_a_member_that_points_the_wrong_way_gets_no_weight() -> None:
    rng = np.random.default_rng(1)
    signal = rng.normal(size=5000)
    y = (rng.random(5000) < 1 / (1 + np.exp(-2 * signal))).astype(float)
    x = np.stack([signal, -signal + rng.normal(scale=0.5, size=5000)], axis=1)
    w = fit_stacking_weights(x, y, np.ones(len(y)), l2=1.0)
    assert w[1] == 0.0 and w[0] > 1.0


def test_stacking_rejects_mismatched_or_empty_input() -> None:
    with pytest.raises(SwitchLLMError, match="do not match"):
        fit_stacking_weights(np.zeros((3, 2)), np.zeros(2), np.ones(2), 1.0)
    with pytest.raises(SwitchLLMError, match="no battles"):
        fit_stacking_weights(np.zeros((0, 2)), np.zeros(0), np.zeros(0), 1.0)


@pytest.fixture(scope="module")
def member_cards(tmp_path_factory) -> tuple[list[Path], Battles]:
    """knn and mf cards trained on half of the sample's training prompts; the other half
    (which no member saw) is returned for fitting the ensemble."""
    train, _ = mmlu_split()
    members_part, stack = split_by_prompt(train, 0.5, seed=1)
    root = tmp_path_factory.mktemp("members")
    paths = []
    for kind, params in (("knn", {}), ("mf", FAST_MF)):
        path = root / kind
        router_class(kind)(**params).fit(members_part).save(path)
        paths.append(path)
    return paths, stack


@pytest.fixture(scope="module")
def frozen(member_cards) -> EnsembleRouter:
    paths, stack = member_cards
    return EnsembleRouter(members=[str(p) for p in paths]).fit(stack)


def test_frozen_members_combine_by_their_logits(frozen: EnsembleRouter, member_cards) -> None:
    paths, _ = member_cards
    _, test = mmlu_split()
    prompts = test.prompts[:40]
    assert frozen.weights.shape == (2,) and (frozen.weights >= 0).all()
    assert frozen.weights.sum() > 0
    expected = sum(w * logit(load_router(p).win_rate(prompts, STRONG, WEAK))
                   for w, p in zip(frozen.weights, paths, strict=True))
    np.testing.assert_allclose(frozen.win_rate(prompts, STRONG, WEAK),
                               1 / (1 + np.exp(-expected)), atol=1e-9)
    np.testing.assert_allclose(frozen.win_rate(prompts, STRONG, WEAK)
                               + frozen.win_rate(prompts, WEAK, STRONG), 1.0, atol=1e-6)


def test_ensemble_beats_random_held_out(frozen: EnsembleRouter) -> None:
    _, test = mmlu_split()
    prompts, gains = pair_gains(test, STRONG, WEAK)
    score = apgr(frozen.win_rate([test.prompts[i] for i in prompts], STRONG, WEAK), gains)
    assert score is not None and score > 0.6


def test_card_names_members_and_round_trips(frozen: EnsembleRouter, member_cards,
                                            tmp_path) -> None:
    paths, _ = member_cards
    frozen.save(tmp_path / "ens")
    card = json.loads((tmp_path / "ens" / "router.json").read_text())
    assert [m["card"] for m in card["member_cards"]] == [str(p.resolve()) for p in paths]
    assert all(len(m["weights_sha256"]) == 64 for m in card["member_cards"])
    assert not (tmp_path / "ens" / "members").exists()  # frozen members are referred to
    loaded = load_router(tmp_path / "ens")
    prompts = mmlu_split()[1].prompts[:30]
    np.testing.assert_array_equal(loaded.win_rate(prompts), frozen.win_rate(prompts))
    with pytest.raises(UnknownModelError, match="does not know model 'gpt-5'"):
        loaded.win_rate(prompts, "gpt-5", WEAK)


def test_a_changed_member_is_refused(member_cards, tmp_path) -> None:
    paths, stack = member_cards
    copies = []
    for path in paths:
        copy = tmp_path / path.name
        load_router(path).save(copy)
        copies.append(copy)
    EnsembleRouter(members=[str(c) for c in copies]).fit(stack).save(tmp_path / "ens")
    router_class("knn")(k=8).fit(stack).save(copies[0])  # retrained in place
    with pytest.raises(CardError, match="not the card the ensemble was fitted with"):
        load_router(tmp_path / "ens").win_rate(["What is 2 + 2?"])


def test_trained_members_are_saved_inside_the_card(tmp_path) -> None:
    train, test = mmlu_split()
    router = EnsembleRouter(members=["knn", "sw_ranking"], train_members=True).fit(train)
    # cross-fitted: the weights saw every battle, each scored by members that never saw it
    assert router.card_info["member_fit"]["battles"] == int((train.model_a != train.model_b).sum())
    router.save(tmp_path / "ens")
    card = json.loads((tmp_path / "ens" / "router.json").read_text())
    assert [m["card"] for m in card["member_cards"]] == ["members/0-knn",
                                                         "members/1-sw_ranking"]
    moved = tmp_path / "moved"
    (tmp_path / "ens").rename(moved)  # member paths are relative to the card
    loaded = load_router(moved)
    prompts, gains = pair_gains(test, STRONG, WEAK)
    rates = loaded.win_rate([test.prompts[i] for i in prompts], STRONG, WEAK)
    np.testing.assert_array_equal(rates, router.win_rate([test.prompts[i] for i in prompts],
                                                         STRONG, WEAK))
    assert apgr(rates, gains) > 0.6


def test_bad_parameters_and_cards_are_clear_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="member of an ensemble"):
        EnsembleRouter(members=["knn", "ensemble"])
    with pytest.raises(ValueError, match="repeat"):
        EnsembleRouter(members=["knn", "knn"])
    with pytest.raises(SwitchLLMError, match="not fitted"):
        EnsembleRouter().win_rate(["hi"])
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "router.json").write_text(json.dumps(
        {"type": "ensemble", "params": {"members": ["knn", "mf"]}}))
    with pytest.raises(CardError, match="'weights' tensor"):
        load_router(tmp_path / "bad")


def _write_half(rows: list[list[str]], header: list[str], path: Path) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_train_command_fits_weights_on_data_the_members_never_saw(tmp_path, capsys) -> None:
    with MMLU_SAMPLE.open(newline="") as f:
        header, *rows = list(csv.reader(f))
    first = _write_half(rows[: len(rows) // 2], header, tmp_path / "first.csv")
    second = _write_half(rows[len(rows) // 2:], header, tmp_path / "second.csv")
    for kind in ("knn", "sw_ranking"):
        assert main(["train", kind, "--data", str(first), "--output", str(tmp_path / kind),
                     "--quiet"]) == 0
    members = f"{tmp_path / 'knn'},{tmp_path / 'sw_ranking'}"
    assert main(["train", "ensemble", "--members", members, "--data", str(second),
                 "--output", str(tmp_path / "ens"), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "APGR" in out and "wrote router card" in out
    assert load_router(tmp_path / "ens").kind == "ensemble"
    # the members trained on `first`: fitting weights on it would reward memorisation
    assert main(["train", "ensemble", "--members", members, "--data", str(first),
                 "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "was trained on" in capsys.readouterr().err
    # the shipped knn trained on the shipped MMLU results, which hold these prompts
    assert main(["train", "ensemble", "--members", "knn", "--data", str(second),
                 "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "'knn' was trained on" in capsys.readouterr().err
    assert main(["train", "ensemble", "--members", members, "--data", str(second),
                 "--with-shipped", "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    assert "--train-members" in capsys.readouterr().err
    assert main(["train", "ensemble", "--members", "knn,sw_ranking", "--train-members",
                 "--data", str(second), "--output", str(tmp_path / "fresh"), "--quiet"]) == 0
    assert (tmp_path / "fresh" / "members" / "0-knn" / "router.json").is_file()
    assert main(["train", "ensemble", "--members", "knn,nope", "--data", str(second),
                 "--output", str(tmp_path / "bad"), "--quiet"]) == 2
    assert main(["train", "knn", "--members", "knn", "--data", str(second),
                 "--output", str(tmp_path / "bad"), "--quiet"]) == 2


def test_retraining_modes_train_fresh_members() -> None:
    from switchllm.evaluation.runner import _kind_and_params

    kind, params = _kind_and_params("ensemble")
    assert kind == "ensemble" and params["train_members"] is True
    assert mmlu_battles()  # the fixture data exists


def test_eval_combines_members_already_evaluated(frozen: EnsembleRouter, member_cards,
                                                 tmp_path, monkeypatch) -> None:
    from switchllm.evaluation.own_data import benchmark_from_battles
    from switchllm.evaluation.runner import evaluate
    from switchllm.routers.knn import KNNRouter

    paths, _ = member_cards
    frozen.save(tmp_path / "ens")
    _, test = mmlu_split()
    bench = benchmark_from_battles("sample", test, STRONG, WEAK, "MMLU sample")
    alone = evaluate(bench, [str(tmp_path / "ens")], STRONG, WEAK)
    calls = []
    original = KNNRouter.win_rate
    monkeypatch.setattr(KNNRouter, "win_rate",
                        lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    together = evaluate(bench, [*map(str, paths), str(tmp_path / "ens")], STRONG, WEAK)
    assert len(calls) == 1  # knn scored the prompts once, for itself and for the ensemble
    key = str(tmp_path / "ens")
    np.testing.assert_allclose(together["routers"][key]["curve"]["quality"],
                               alone["routers"][key]["curve"]["quality"], atol=1e-9)
    assert together["routers"][key]["apgr"] == pytest.approx(alone["routers"][key]["apgr"])


def test_stacking_uses_only_battles_every_member_knows() -> None:
    """A pair-only member (like causal_llm) limits the stacking set to its pair; the features,
    outcomes and the battles they belong to line up (ensemble_default.py crashed here)."""
    from switchllm.routers.ensemble import stacking_features, usable_battles

    prompts = mmlu_battles().prompts[:80]
    rng = np.random.default_rng(0)
    models = [STRONG, WEAK, "third-model"]
    scores = rng.integers(0, 2, size=(len(prompts), 3)).astype(float)
    battles = Battles.from_scores(prompts, models, scores)
    everyone = router_class("knn")(k=8).fit(battles)
    pair = router_class("knn")(k=8).fit(Battles.from_scores(prompts, models[:2], scores[:, :2]))
    x, y, s = stacking_features([everyone, pair], battles)
    sub = usable_battles([everyone, pair], battles)
    assert sorted(sub.models) == sorted([STRONG, WEAK])
    assert len(x) == len(y) == len(s) == len(sub) < len(battles)
    assert np.array_equal(y, sub.outcome.astype(float))
    assert fit_stacking_weights(x, y, s, 1.0).shape == (2,)
