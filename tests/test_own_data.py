"""Your own data: train --with-shipped/--weight, eval --data on each format, --cv,
--train-sizes learning curves, and the in-sample marking of cards."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from routers_fixtures import MMLU_SAMPLE, STRONG, WEAK, mmlu_battles

from switchllm.cli import main
from switchllm.data.benchmarks import BENCHMARKS, load_benchmark
from switchllm.data.own_data import in_sample, weighted_concat
from switchllm.evaluation.own_data import benchmark_from_battles
from switchllm.evaluation.runner import card_in_sample


@pytest.fixture(scope="module")
def formats(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The MMLU sample written in each of the three formats."""
    folder = tmp_path_factory.mktemp("formats")
    with MMLU_SAMPLE.open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    battles, scores = [], []
    for row in rows:
        strong, weak = row[STRONG] == "True", row[WEAK] == "True"
        winner = "tie" if strong == weak else "model_a" if strong else "model_b"
        battles.append({"prompt": row["prompt"], "model_a": STRONG, "model_b": WEAK,
                        "winner": winner})
        scores.append({"prompt": row["prompt"], "scores": {STRONG: 8 * strong + 1,
                                                           WEAK: 8 * weak + 1}})
    paths = {"labels": MMLU_SAMPLE, "battles": folder / "battles.jsonl",
             "scores": folder / "scores.jsonl"}
    for name, items in (("battles", battles), ("scores", scores)):
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in items))
    return paths


@pytest.fixture(scope="module")
def mmlu_card(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cards") / "knn"
    assert main(["train", "knn", "--data", str(MMLU_SAMPLE), "--output", str(out),
                 "--param", "k=16", "--quiet"]) == 0
    return out


def test_weighted_concat_gives_the_user_data_its_share() -> None:
    battles = mmlu_battles()
    keep = np.zeros(len(battles.prompts), dtype=bool)
    keep[:40] = True
    mine, rest = battles.select_prompts(keep), battles.select_prompts(~keep)
    for share in (0.25, 0.5, 0.9):
        mixed = weighted_concat(rest, mine, share)
        user_rows = np.isin(mixed.prompt_idx, [mixed.prompts.index(p) for p in mine.prompts])
        assert mixed.weight[user_rows].sum() / mixed.weight.sum() == pytest.approx(share, 1e-4)


def test_train_with_shipped_records_sets_and_weight(tmp_path: Path, capsys) -> None:
    out = tmp_path / "knn"
    assert main(["train", "knn", "--data", str(MMLU_SAMPLE), "--with-shipped", "--weight",
                 "0.3", "--output", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "with the shipped sets" in printed and "carry 30% of the training weight" in printed
    card = json.loads((out / "router.json").read_text())
    training = card["training"]
    assert training["user_weight"] == 0.3
    assert "mmlu" in training["shipped_sets"] and "mt-bench" not in training["shipped_sets"]
    assert len(training["prompt_digests"]) == 500
    assert card["validation"]["prompts"] == 50  # validated on your prompts only
    assert len(card["models"]) > 2  # the shipped sets' models came in


@pytest.mark.parametrize("argv, needle", [
    (["--weight", "0.3"], "--weight needs --with-shipped"),
    (["--with-shipped", "--weight", "1.5"], "between 0 and 1"),
])
def test_train_weight_errors(tmp_path: Path, capsys, argv: list[str], needle: str) -> None:
    code = main(["train", "knn", "--data", str(MMLU_SAMPLE), "--output", str(tmp_path / "c"),
                 *argv])
    assert code == 2 and needle in capsys.readouterr().err


def test_eval_data_scores_every_format_alike(formats: dict[str, Path], mmlu_card: Path,
                                             tmp_path: Path, capsys) -> None:
    apgrs = {}
    for name, path in formats.items():
        out = tmp_path / name
        assert main(["eval", "--data", str(path), "--routers", f"random,{mmlu_card}",
                     "--output", str(out)]) == 0
        printed = capsys.readouterr().out
        results = json.loads((out / f"{path.stem}.json").read_text())
        assert (out / f"{path.stem}.png").is_file()
        assert results["n_prompts"] == 500 and results["pair"] == {"strong": STRONG,
                                                                  "weak": WEAK}
        entry = results["routers"][str(mmlu_card)]
        assert entry["in_sample"] == {"prompts": 500, "share": 1.0}
        assert results["routers"]["random"]["in_sample"] is None
        assert "* in-sample" in printed and f"{mmlu_card} *" in printed
        apgrs[name] = entry["apgr"]
    # APGR depends only on the per-prompt gain, which the three files share
    assert apgrs["battles"] == pytest.approx(apgrs["labels"])
    assert apgrs["scores"] == pytest.approx(apgrs["labels"])


def test_eval_data_cv_is_out_of_sample(formats: dict[str, Path], tmp_path: Path,
                                       capsys) -> None:
    assert main(["eval", "--data", str(formats["battles"]), "--routers", "knn", "--cv", "3",
                 "--output", str(tmp_path)]) == 0
    results = json.loads((tmp_path / "battles.json").read_text())
    entry = results["routers"]["knn (cv3)"]
    assert "in_sample" not in entry
    assert entry["apgr"] > results["references"]["random"]["apgr"]
    assert "* in-sample" not in capsys.readouterr().out


def test_eval_train_sizes_draws_the_learning_curve(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--data", str(MMLU_SAMPLE), "--routers", "knn", "--train-sizes",
                 "50,200,5000", "--output", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    results = json.loads((tmp_path / "mmlu_sample_learning_curve.json").read_text())
    assert (tmp_path / "mmlu_sample_learning_curve.png").is_file()
    assert results["sizes"] == [50, 200] and results["sizes_too_large"] == [5000]
    assert results["test_prompts"] == 150 and results["pool_prompts"] == 350
    curve = results["curves"]["knn"]
    for mode in ("own", "with_shipped"):
        assert set(curve[mode]) == {"50", "200"}
        assert all(np.isfinite(curve[mode][n]["mean"]) for n in ("50", "200"))
    assert np.isfinite(curve["shipped_only"]["mean"])
    assert "+ shipped sets" in printed and "skipped: [5000]" in printed


def test_eval_train_sizes_needs_router_kinds(tmp_path: Path, capsys) -> None:
    assert main(["eval", "--data", str(MMLU_SAMPLE), "--routers", "random", "--train-sizes",
                 "50", "--output", str(tmp_path)]) == 2
    assert "router kinds" in capsys.readouterr().err


def test_shipped_cards_are_in_sample_on_their_training_sets() -> None:
    mmlu = load_benchmark("mmlu")
    assert card_in_sample("knn", mmlu) == {"shipped_sets": ["mmlu"]}
    assert card_in_sample("knn", load_benchmark("mt-bench")) is None  # never trained on
    assert card_in_sample("random", mmlu) is None
    # RouterBench and LLMRouter benchmarks are test splits of sets trained on their train split
    assert in_sample({"shipped_sets": BENCHMARKS}, "routerbench", []) is None
    assert in_sample({"shipped_sets": ["mt-bench-human"]}, "mt-bench", []) == {
        "shipped_sets": ["mt-bench-human"]}


def test_benchmark_from_battles_rejects_a_missing_pair() -> None:
    with pytest.raises(Exception, match="not in"):
        benchmark_from_battles("x", mmlu_battles(), STRONG, "nobody")
