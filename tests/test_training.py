"""Training: APGR, the validation split, default pairs, and the train/route commands."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from routers_fixtures import MMLU_SAMPLE, STRONG, WEAK, mmlu_battles

from switchllm.cli import main
from switchllm.data.battles import Battles
from switchllm.errors import SwitchLLMError
from switchllm.routers import load_router
from switchllm.training import apgr, choose_default_pair, parse_params, split_by_prompt


def test_apgr_oracle_random_and_constant() -> None:
    rng = np.random.default_rng(0)
    gains = rng.choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=2000)
    assert apgr(gains, gains) > 0.8  # knowing the gains is far better than random
    assert apgr(-gains, gains) < 0.2
    assert apgr(np.full(2000, 0.3), gains) == pytest.approx(0.5)  # one group: the diagonal
    assert apgr(rng.uniform(size=2000), gains) == pytest.approx(0.5, abs=0.05)
    assert apgr(np.zeros(3), np.array([-1.0, 0.0, 0.0])) is None  # strong not better


def test_split_keeps_each_prompt_on_one_side() -> None:
    battles = mmlu_battles()
    train, val = split_by_prompt(battles, 0.1, seed=3)
    assert val is not None and len(val.prompts) == 50
    assert not set(train.prompts) & set(val.prompts)
    assert len(train) + len(val) == len(battles)
    again, _ = split_by_prompt(battles, 0.1, seed=3)
    assert again.prompts == train.prompts
    assert split_by_prompt(battles, 0.0, seed=0)[1] is None


def test_default_pair_without_routellm_models() -> None:
    battles = Battles.from_records([("p", "a", "b", 1.0), ("p", "b", "c", 1.0),
                                    ("q", "a", "c", 1.0)])
    assert choose_default_pair(battles) == ("a", "c")
    assert choose_default_pair(battles, weak="b") == ("a", "b")
    assert choose_default_pair(mmlu_battles()) == (STRONG, WEAK)
    with pytest.raises(SwitchLLMError, match="'zz' is not in the training data"):
        choose_default_pair(battles, strong="zz")


def test_params_are_typed_and_checked() -> None:
    assert parse_params("knn", ["k=5", "temperature=0.2"]) == {"k": 5, "temperature": 0.2}
    with pytest.raises(SwitchLLMError, match="key one of k, temperature"):
        parse_params("knn", ["neighbours=5"])
    with pytest.raises(SwitchLLMError, match="not a valid int"):
        parse_params("knn", ["k=many"])


@pytest.fixture(scope="module")
def knn_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cards") / "knn"
    assert main(["train", "knn", "--data", str(MMLU_SAMPLE), "--output", str(out),
                 "--param", "k=16", "--quiet"]) == 0
    return out


def test_train_command_writes_a_complete_card(knn_card: Path, capsys) -> None:
    assert (knn_card / "router.json").is_file()
    assert (knn_card / "weights.safetensors").is_file()
    card = json.loads((knn_card / "router.json").read_text())
    assert card["type"] == "knn" and card["params"]["k"] == 16
    assert card["embedding_model"] == "all-MiniLM-L6-v2+tail"
    assert card["fingerprint"] == mmlu_battles().fingerprint()
    assert card["training"]["train_prompts"] == 450
    validation = card["validation"]
    assert validation["prompts"] == 50 and 0 < validation["log_loss"] < 2
    assert validation["apgr"]["pair"] == [STRONG, WEAK]
    assert len(card["calibration"]["quantiles"]) == 101
    router = load_router(knn_card)
    assert 0 <= router.threshold_for_strong_share(0.3) <= 1
    # scores -> P(win) maps for choosing among N models, fitted on the validation split
    quality = card["quality_calibration"]
    assert quality["source"] == "validation" and quality["method"] == "isotonic"
    for knots in [quality["pooled"], *quality["models"].values()]:
        assert np.all(np.diff(knots["x"]) >= 0) and np.all(np.diff(knots["y"]) >= 0)
        assert 0 <= min(knots["y"]) <= max(knots["y"]) <= 1


def test_train_command_prints_validation(tmp_path: Path, capsys) -> None:
    out = tmp_path / "mf"
    assert main(["train", "mf", "--data", str(MMLU_SAMPLE), "--output", str(out),
                 "--param", "epochs=3", "--quiet", "--val-fraction", "0.2"]) == 0
    printed = capsys.readouterr().out
    assert "validation: 100 prompts" in printed and "APGR" in printed
    assert (out / "weights.safetensors").is_file()


def test_train_command_reports_user_errors(tmp_path: Path, capsys) -> None:
    assert main(["train", "knn", "--data", str(tmp_path / "missing.jsonl"),
                 "--output", str(tmp_path / "x")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["train", "knn", "--data", str(MMLU_SAMPLE), "--output", str(tmp_path / "x"),
                 "--param", "k=lots"]) == 2
    assert "not a valid int" in capsys.readouterr().err


def test_route_command_prints_decisions(knn_card: Path, capsys) -> None:
    prompt = "Which of these is a prime number?\nA. 21\nB. 27\nC. 29\nD. 33\nAnswer:"
    assert main(["route", prompt, "--router", str(knn_card), "--threshold", "0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["router", "win", "rate"]
    assert lines[1].split()[-2:] == ["strong", STRONG]
    assert main(["route", prompt, "--router", str(knn_card), "--router", "random",
                 "--threshold", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 2 and all(row.split()[-2:] == ["weak", WEAK] for row in rows)
    assert main(["route", prompt, "--router", str(knn_card), "--strong-model", "gpt-5"]) == 2
    assert "does not know model 'gpt-5'" in capsys.readouterr().err
