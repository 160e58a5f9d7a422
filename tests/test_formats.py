"""Training-data formats: battles, scores and labels in JSONL/CSV, bad rows, merging."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from routers_fixtures import MMLU_SAMPLE, STRONG, WEAK

from switchllm.data.formats import load_training_data, read_training_file
from switchllm.errors import DataError


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def outcome_of(battles, prompt: str, a: str, b: str) -> float:
    p = battles.prompts.index(prompt)
    ia, ib = battles.models.index(a), battles.models.index(b)
    for i in np.nonzero(battles.prompt_idx == p)[0]:
        if (battles.model_a[i], battles.model_b[i]) == (ia, ib):
            return float(battles.outcome[i])
        if (battles.model_a[i], battles.model_b[i]) == (ib, ia):
            return 1.0 - float(battles.outcome[i])
    raise AssertionError("no such battle")


def test_labels_csv_like_routellm_mmlu() -> None:
    battles, info, bad = read_training_file(MMLU_SAMPLE)
    assert info["format"] == "labels" and not bad
    assert len(battles.prompts) == 500 and len(battles) == 500
    assert set(battles.models) == {STRONG, WEAK}
    assert set(np.unique(battles.outcome)) <= {0.0, 0.5, 1.0}


def test_battles_jsonl_with_all_winners(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [
        {"prompt": "p1", "model_a": "x", "model_b": "y", "winner": "model_a"},
        {"prompt": "p1", "model_a": "x", "model_b": "z", "winner": "model_b"},
        {"prompt": "p2", "model_a": "y", "model_b": "z", "winner": "tie"},
        {"prompt": "p2", "model_a": "x", "model_b": "y", "winner": "tie (bothbad)",
         "weight": 2.5},
    ])
    battles, info, bad = read_training_file(path)
    assert info["format"] == "battles" and not bad and len(battles) == 4
    assert outcome_of(battles, "p1", "x", "y") == 1.0
    assert outcome_of(battles, "p1", "z", "x") == 1.0
    assert outcome_of(battles, "p2", "y", "z") == 0.5
    assert battles.weight.tolist() == [1.0, 1.0, 1.0, 2.5]


def test_scores_jsonl_and_csv(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "s.jsonl", [
        {"prompt": "p1", "scores": {"x": 9, "y": 3.5, "z": None}},
        {"prompt": "p2", "scores": {"x": 1, "y": 1, "z": 8}},
    ])
    battles, info, _ = read_training_file(path)
    assert info["format"] == "scores" and len(battles) == 1 + 3
    assert outcome_of(battles, "p1", "x", "y") == 1.0
    assert outcome_of(battles, "p2", "x", "y") == 0.5
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("id,prompt,x,y,x|total_cost,note\n"
                        "1,p1,0.9,0.2,0.01,hello\n2,p2,0.1,0.7,0.02,world\n")
    battles, info, _ = read_training_file(csv_path)
    assert info["format"] == "scores" and battles.models == ["x", "y"]
    assert outcome_of(battles, "p2", "y", "x") == 1.0


def test_labels_jsonl(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "l.jsonl", [
        {"prompt": "p1", "results": {"x": True, "y": False}},
        {"prompt": "p2", "results": {"x": False, "y": False}},
    ])
    battles, info, _ = read_training_file(path)
    assert info["format"] == "labels"
    assert outcome_of(battles, "p1", "x", "y") == 1.0
    assert outcome_of(battles, "p2", "x", "y") == 0.5


def test_bad_rows_are_reported_with_file_and_line(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "b.jsonl", [
        {"prompt": "p1", "model_a": "x", "model_b": "y", "winner": "model_a"},
        "{not json",
        {"prompt": "p2", "model_a": "x", "model_b": "y", "winner": "x"},
        {"prompt": "", "model_a": "x", "model_b": "y", "winner": "tie"},
        {"prompt": "p3", "model_a": "x", "model_b": "y", "winner": "model_b"},
    ])
    reported: list[str] = []
    loaded = load_training_data([path], report=reported.append)
    assert len(loaded.battles) == 2
    assert [(r.line) for r in loaded.bad_rows] == [2, 3, 4]
    assert reported[0].startswith(f"skipped {path}:2: invalid JSON")
    assert "winner 'x' is not one of" in reported[1]
    with pytest.raises(DataError, match=rf"{path}:2: invalid JSON"):
        load_training_data([path], on_bad_row="error")


def test_bad_csv_value_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    rows = "".join(f"q{i},True,False\n" for i in range(20))
    path.write_text("prompt,x,y\n" + rows + "q20,maybe,True\n")
    loaded = load_training_data([path], report=lambda line: None)
    assert len(loaded.battles) == 20
    (bad,) = loaded.bad_rows
    assert bad.line == 22 and "'maybe' is not true/false" in bad.reason


@pytest.mark.parametrize("content, message", [
    ("", "no readable records"),
    ('{"prompt": "p", "model_a": "x", "model_b": "x", "winner": "tie"}\n', "no usable"),
    ('{"prompt": "p", "answer": 3}\n', "cannot tell the format"),
    ('{"prompt": "p", "scores": {"x": 1}}\n', "nothing to compare"),
])
def test_unusable_files_are_clear_errors(tmp_path: Path, content: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(content)
    with pytest.raises(DataError, match=message):
        load_training_data([path], report=lambda line: None)


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_training_data([tmp_path / "nope.jsonl"])
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        load_training_data([tmp_path / "data.txt"])


def test_files_merge_and_format_can_be_forced(tmp_path: Path) -> None:
    a = write_jsonl(tmp_path / "a.jsonl", [
        {"prompt": "p1", "model_a": "x", "model_b": "y", "winner": "model_a"}])
    b = write_jsonl(tmp_path / "b.jsonl", [{"prompt": "p1", "scores": {"y": 2, "z": 1}},
                                           {"prompt": "p2", "scores": {"x": 2, "z": 1}}])
    loaded = load_training_data([a, b])
    assert len(loaded.battles) == 3 and loaded.battles.prompts == ["p1", "p2"]
    assert set(loaded.battles.models) == {"x", "y", "z"}
    with pytest.raises(DataError, match="no usable battles"):
        load_training_data([b], fmt="battles", report=lambda line: None)
