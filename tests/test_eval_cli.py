"""`switchllm eval` end to end: files, metrics of the random router, honest modes, errors."""

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from switchllm.cli import main
from switchllm.data import benchmarks as bm
from switchllm.data.battles import Battles
from switchllm.routers import ROUTER_KINDS
from switchllm.routers.base import Router


class DigitRouter(Router):
    """Test-only router that learns each model's win share on prompts with / without a digit.
    It records the prompts of every fit so the tests can check what it was trained on."""

    kind = "digit"
    fits: list[set[str]] = []

    def fit(self, battles: Battles, progress: bool = False) -> "DigitRouter":
        DigitRouter.fits.append(set(battles.prompts))
        has_digit = np.array([any(c.isdigit() for c in p) for p in battles.prompts])
        flag = has_digit[battles.prompt_idx].astype(int)
        self.models = list(battles.models)
        self.wins = np.ones((len(self.models), 2))
        self.games = np.full((len(self.models), 2), 2.0)
        np.add.at(self.wins, (battles.model_a, flag), battles.outcome)
        np.add.at(self.wins, (battles.model_b, flag), 1.0 - battles.outcome)
        np.add.at(self.games, (battles.model_a, flag), 1.0)
        np.add.at(self.games, (battles.model_b, flag), 1.0)
        return self

    def win_rate(self, prompts: Sequence[str], strong: str | None = None,
                 weak: str | None = None) -> np.ndarray:
        strong, weak = self.resolve_pair(strong, weak)
        share = self.wins / self.games
        flag = np.array([any(c.isdigit() for c in p) for p in prompts], dtype=int)
        s, w = share[self.models.index(strong), flag], share[self.models.index(weak), flag]
        return s / (s + w)


@pytest.fixture
def digit_router(monkeypatch: pytest.MonkeyPatch) -> type[DigitRouter]:
    monkeypatch.setitem(ROUTER_KINDS, "digit", f"{__name__}:DigitRouter")
    DigitRouter.fits = []
    return DigitRouter


def test_random_on_mmlu_writes_files_and_scores_half(tmp_path: Path) -> None:
    assert main(["eval", "--benchmark", "mmlu", "--routers", "random", "--output",
                 str(tmp_path)]) == 0
    assert (tmp_path / "mmlu.png").stat().st_size > 10_000
    results = json.loads((tmp_path / "mmlu.json").read_text())
    entry = results["routers"]["random"]
    assert {"apgr", "cpt20", "cpt50", "cpt80", "auc", "curve", "routellm_deciles"} <= set(entry)
    assert entry["apgr"] == pytest.approx(0.5, abs=0.03)
    assert entry["cpt50"] == pytest.approx(50, abs=3)
    assert len(entry["curve"]["strong_pct"]) == 101
    assert len(entry["routellm_deciles"]["curve"]["strong_pct"]) == 11
    refs = results["references"]
    assert round(refs["strong"]["quality"], 2) == 80.59
    assert round(refs["weak"]["quality"], 2) == 68.09
    assert refs["oracle"]["apgr"] > 1.0  # strong only where it helps beats always-strong
    assert refs["random"]["apgr"] == pytest.approx(0.5, abs=0.03)
    assert results["pair"] == {"strong": bm.STRONG, "weak": bm.WEAK}


def test_several_benchmarks_fall_back_to_their_default_pair(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--benchmark", "mt-bench,llmrouter", "--routers", "random",
                 "--output", str(tmp_path), "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "using its default pair" in out and "APGR" in out
    llm = json.loads((tmp_path / "llmrouter.json").read_text())
    assert llm["pair"]["strong"] == bm.load_benchmark("llmrouter").default_pair[0]
    assert "aiq" in llm["routers"]["random"] and "models_hull_aiq" in llm["cost"]
    assert (tmp_path / "llmrouter_cost.png").is_file()
    assert (tmp_path / "mt-bench.json").is_file()


def test_cv_trains_a_fresh_router_per_fold_on_the_other_folds(
        tmp_path: Path, digit_router: type[DigitRouter]) -> None:
    assert main(["eval", "--benchmark", "mt-bench", "--routers", "digit", "random",
                 "--cv", "3", "--output", str(tmp_path)]) == 0
    prompts = set(bm.load_benchmark("mt-bench").prompts)
    assert len(digit_router.fits) == 3
    held_out = [prompts - fit for fit in digit_router.fits]
    assert all(fit < prompts for fit in digit_router.fits)
    assert set().union(*held_out) == prompts  # every prompt is held out once
    assert sum(len(h) for h in held_out) == len(prompts)
    results = json.loads((tmp_path / "mt-bench.json").read_text())
    assert set(results["routers"]) == {"digit (cv3)", "random"}
    assert results["mode"] == "cv" and results["cv_folds"] == 3


def test_leave_out_never_trains_on_the_benchmark(tmp_path: Path,
                                                 digit_router: type[DigitRouter]) -> None:
    assert main(["eval", "--benchmark", "mt-bench", "--routers", "digit", "--leave-out",
                 "--output", str(tmp_path)]) == 0
    (trained,) = digit_router.fits
    assert not trained & set(bm.load_benchmark("mt-bench").prompts)
    assert trained & set(bm.load_benchmark("mmlu").prompts)
    results = json.loads((tmp_path / "mt-bench.json").read_text())
    assert 0.0 <= results["routers"]["digit (leave-out)"]["apgr"] <= 1.5


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--benchmark", "mmlu-pro"], "unknown benchmark 'mmlu-pro'"),
        (["--routers", "nonsense"], "unknown router 'nonsense'"),
        (["--strong-model", "gpt-5"], "model 'gpt-5' is not in benchmark mmlu"),
        (["--cv", "1"], "--cv needs at least 2 folds"),
    ],
)
def test_bad_arguments_fail_with_one_line(argv: list[str], message: str, tmp_path: Path,
                                          capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--output", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1


def test_unwritable_output_fails_without_traceback(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    done = subprocess.run([sys.executable, "-m", "switchllm", "eval", "--benchmark", "mt-bench",
                           "--output", str(blocker / "out")], capture_output=True, text=True)
    assert done.returncode == 2
    assert "cannot write to output directory" in done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_a_router_that_cannot_score_the_pair_is_skipped_in_one_short_line(
        tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["eval", "--benchmark", "mt-bench-human", "--routers", "mf,knn",
                 "--strong-model", "alpaca-13b", "--weak-model", "llama-13b",
                 "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    line = next(line for line in out.splitlines() if "no router can score" in line)
    assert "the mf router does not know model 'alpaca-13b'" in line
    assert "gpt-4-1106-preview" not in out  # not the routers' lists of known models
    assert len(line) < 300
