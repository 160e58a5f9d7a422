"""The causal_llm router on a tiny randomly initialised Llama: load, grade, train, save, load."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from neural_fixtures import MMLU_DIR, STRONG, WEAK, make_tiny_causal_lm
from safetensors.numpy import load_file

from switchllm.data.battles import Battles
from switchllm.errors import CardError, DataError, SwitchLLMError
from switchllm.routers import load_router
from switchllm.routers.causal_llm import CausalLLMRouter


def subject_prompts(subject: str, n: int) -> list[str]:
    with (MMLU_DIR / f"mmlu_{subject}.csv").open(newline="") as handle:
        return [row["prompt"] for row in csv.DictReader(handle)][:n]


def separable_battles(n: int) -> Battles:
    """Real prompts, toy labels: GPT-4 wins every maths question, Mixtral every religion one."""
    maths = subject_prompts("high_school_mathematics", n)
    religion = subject_prompts("world_religions", n)
    scores = np.array([[1.0, 0.0]] * n + [[0.0, 1.0]] * n)
    return Battles.from_scores(maths + religion, [STRONG, WEAK], scores)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm") / "model")


@pytest.fixture(scope="module")
def trained(tiny_lm: Path) -> tuple[CausalLLMRouter, Battles]:
    battles = separable_battles(12)
    router = CausalLLMRouter(base_model=str(tiny_lm), epochs=3, lr=2e-2, max_length=32)
    return router.fit(battles), battles


def test_zero_shot_grades_are_probabilities(tiny_lm: Path) -> None:
    router = CausalLLMRouter(base_model=str(tiny_lm), max_length=32)
    prompts = subject_prompts("anatomy", 5)
    probs = router.label_probabilities(prompts)
    assert probs.shape == (5, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    rates = router.win_rate(prompts)
    assert np.all((rates >= 0) & (rates <= 1))
    np.testing.assert_allclose(rates, probs @ [1.0, 0.75, 0.5, 0.25, 0.0])
    paper_rule = CausalLLMRouter(base_model=str(tiny_lm), max_length=32, score_threshold=4)
    np.testing.assert_allclose(paper_rule.win_rate(prompts), probs[:, :3].sum(axis=1), atol=1e-6)


def test_training_reduces_the_loss(trained) -> None:
    router, _ = trained
    losses = router.card_info["training"]["epoch_losses"]
    assert losses[-1] < losses[0]
    assert router.card_info["training"]["n_prompts"] == 24


def test_card_round_trip_gives_identical_scores(trained, tiny_lm: Path, tmp_path: Path) -> None:
    router, battles = trained
    router.save(tmp_path / "card")
    weights = tmp_path / "card" / "weights.safetensors"
    names = set(load_file(str(weights)))
    # top two blocks + final norm only: no embeddings, no output head
    assert names and all(n.startswith(("model.layers.", "model.norm.")) for n in names)
    assert weights.stat().st_size < (tiny_lm / "model.safetensors").stat().st_size / 10
    loaded = load_router(tmp_path / "card")
    assert isinstance(loaded, CausalLLMRouter)
    np.testing.assert_array_equal(loaded.win_rate(battles.prompts),
                                  router.win_rate(battles.prompts))


def test_a_different_base_is_refused(trained, tmp_path: Path) -> None:
    router, _ = trained
    router.save(tmp_path / "card")
    other = make_tiny_causal_lm(tmp_path / "other", seed=7)  # same config, other weights
    card_json = tmp_path / "card" / "router.json"
    card = json.loads(card_json.read_text())
    card["params"]["base_model"] = str(other)
    card_json.write_text(json.dumps(card))
    with pytest.raises(CardError, match="weights do not match"):
        load_router(tmp_path / "card")
    wider = make_tiny_causal_lm(tmp_path / "wider", hidden=48)
    card["params"]["base_model"] = str(wider)
    card_json.write_text(json.dumps(card))
    with pytest.raises(CardError, match="configuration do not match"):
        load_router(tmp_path / "card")


def test_training_needs_battles_of_the_pair(tiny_lm: Path) -> None:
    battles = Battles.from_records([("a prompt", "model-x", "model-y", 1.0)])
    with pytest.raises(DataError, match="set router.default_pair"):
        CausalLLMRouter(base_model=str(tiny_lm)).fit(battles)


def test_missing_or_unsafe_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SwitchLLMError, match="needs base_model"):
        CausalLLMRouter().win_rate(["hi"])
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(SwitchLLMError, match="only safetensors"):
        CausalLLMRouter(base_model=str(tmp_path / "pickled")).win_rate(["hi"])


@pytest.mark.slow
def test_learns_a_separable_labelling_of_real_prompts(tiny_lm: Path) -> None:
    battles = separable_battles(40)
    router = CausalLLMRouter(base_model=str(tiny_lm), epochs=6, lr=2e-2, max_length=48)
    rates = router.fit(battles).win_rate(battles.prompts)
    assert rates[:40].mean() > rates[40:].mean() + 0.1
