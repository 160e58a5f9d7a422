"""User training data -> `Battles`. Three formats, in JSONL (or a JSON list) or CSV:

- battles: `{"prompt", "model_a", "model_b", "winner"}` with winner `model_a`, `model_b`, `tie`
  or `tie (bothbad)`; optional `weight` (> 0). CSV: the same column names.
- scores: `{"prompt", "scores": {model: number}}`, higher is better; `null` = not scored.
  CSV: a `prompt` column and one numeric column per model.
- labels (golden labels): `{"prompt", "results": {model: true/false}}`, e.g. "was the answer
  right". CSV: a `prompt` column and one True/False column per model (RouteLLM's MMLU files).

The format is detected per file from its first record (or CSV header and values), or forced.
Scores and labels become comparisons only through `Battles.from_scores`. A row that cannot be
read is reported with file and line number, then skipped (`on_bad_row="skip"`) or raises
(`"error"`). In a scores/labels CSV, columns other than `prompt` whose values are numbers or
True/False are models; id-like columns (`id`, `*_id`, `index`) and columns whose name contains
`|` (e.g. RouterBench's `model|total_cost`) are ignored, as is any text column.
"""

from __future__ import annotations

import csv
import json
import math
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from switchllm.data.battles import A_WINS, B_WINS, TIE, Battles
from switchllm.errors import DataError

FORMATS = ("battles", "scores", "labels")
WINNERS = {"model_a": A_WINS, "model_b": B_WINS, "tie": TIE, "tie (bothbad)": TIE}
TRUE_WORDS = {"true": 1.0, "false": 0.0}
CSV_SNIFF_ROWS = 100


@dataclass
class BadRow:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class LoadedData:
    """The merged battles of several files, and what was skipped on the way."""

    battles: Battles
    files: list[dict[str, Any]] = field(default_factory=list)  # path, format, rows, battles
    bad_rows: list[BadRow] = field(default_factory=list)


class _RowError(ValueError):
    pass


def load_training_data(
    paths: Sequence[str | Path], fmt: str = "auto", on_bad_row: str = "skip",
    report: Callable[[str], None] | None = None,
) -> LoadedData:
    """Read every file into one `Battles`. `report` receives one line per bad row
    (default: stderr); with `on_bad_row="error"` the first bad row raises a DataError."""
    if not paths:
        raise DataError("no training data files given")
    if on_bad_row not in ("skip", "error"):
        raise DataError(f"on_bad_row must be 'skip' or 'error', not {on_bad_row!r}")
    report = report or (lambda line: print(line, file=sys.stderr))
    merged: Battles | None = None
    loaded = LoadedData(battles=None)  # type: ignore[arg-type]
    for path in paths:
        battles, info, bad = read_training_file(path, fmt, on_bad_row)
        for row in bad:
            report(f"skipped {row}")
        loaded.bad_rows.extend(bad)
        loaded.files.append(info)
        merged = battles if merged is None else merged.concat(battles)
    assert merged is not None
    loaded.battles = merged
    return loaded


def read_training_file(
    path: str | Path, fmt: str = "auto", on_bad_row: str = "skip",
) -> tuple[Battles, dict[str, Any], list[BadRow]]:
    """One file -> (battles, {path, format, rows, battles}, bad rows)."""
    path = Path(path)
    if fmt not in ("auto", *FORMATS):
        raise DataError(f"unknown data format {fmt!r}; use auto, {', '.join(FORMATS)}")
    if not path.is_file():
        raise DataError(f"training data file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".csv":
        records = _csv_records(path)
    elif suffix in (".jsonl", ".json", ".ndjson"):
        records = _json_records(path)
    else:
        raise DataError(f"{path}: unknown file type {suffix!r}; use .jsonl, .json or .csv")
    bad: list[BadRow] = []

    def fail(line: int, reason: str) -> None:
        row = BadRow(str(path), line, reason)
        if on_bad_row == "error":
            raise DataError(f"{row} (use --on-bad-row skip to skip bad rows)")
        bad.append(row)

    rows: list[tuple[int, dict[str, Any]]] = []
    for line, record in records:
        if isinstance(record, _RowError):
            fail(line, str(record))
        else:
            rows.append((line, record))
    if not rows:
        raise DataError(f"{path} has no readable records")
    if fmt == "auto":
        fmt = _detect(path, rows, suffix == ".csv")
    if fmt == "battles":
        battles = _battles(rows, fail)
    else:
        battles = _scores(path, rows, fmt, suffix == ".csv", fail)
    if battles is None or len(battles) == 0:
        raise DataError(f"{path}: no usable {fmt} rows (nothing to compare)")
    info = {"path": str(path), "format": fmt, "rows": len(rows), "battles": len(battles)}
    return battles, info, bad


# ---- reading records ---------------------------------------------------------------------------
def _json_records(path: Path) -> Iterator[tuple[int, Any]]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    stripped = text.lstrip()
    if stripped.startswith("["):  # a JSON list of objects
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        for i, item in enumerate(items, start=1):
            yield i, item if isinstance(item, dict) else _RowError(
                f"item {i} is {type(item).__name__}, not an object")
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            yield number, _RowError(f"invalid JSON: {exc.msg}")
            continue
        yield number, record if isinstance(record, dict) else _RowError(
            f"expected a JSON object, got {type(record).__name__}")


def _csv_records(path: Path) -> Iterator[tuple[int, Any]]:
    csv.field_size_limit(2**31 - 1)
    try:
        handle = path.open(newline="", encoding="utf-8")
        with handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames:
                raise DataError(f"{path} is empty (no CSV header)")
            for record in reader:
                line = reader.line_num
                if None in record or any(v is None for v in record.values()):
                    yield line, _RowError(
                        f"the number of fields differs from the header's "
                        f"{len(reader.fieldnames)}")
                    continue
                yield line, record
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise DataError(f"{path}: malformed CSV: {exc}") from exc


def _detect(path: Path, rows: list[tuple[int, dict[str, Any]]], is_csv: bool) -> str:
    keys = set(rows[0][1])
    if {"model_a", "model_b", "winner"} <= keys:
        return "battles"
    if not is_csv:
        for name, key in (("scores", "scores"), ("labels", "results")):
            if key in keys:
                return name
        raise DataError(
            f"{path}: cannot tell the format from the first record's keys {sorted(keys)}: "
            "expected prompt with model_a/model_b/winner, scores or results")
    if "prompt" not in keys:
        raise DataError(f"{path}: CSV has no 'prompt' column (columns: {sorted(keys)})")
    models = _csv_model_columns(rows)
    if not models:
        raise DataError(f"{path}: CSV has no model columns of numbers or True/False")
    sample = [r[m] for _, r in rows[:CSV_SNIFF_ROWS] for m in models if r[m].strip()]
    labels = sum(v.strip().lower() in TRUE_WORDS for v in sample)
    return "labels" if labels >= 0.9 * len(sample) else "scores"


# ---- battles -----------------------------------------------------------------------------------
def _battles(rows: list[tuple[int, dict[str, Any]]],
             fail: Callable[[int, str], None]) -> Battles | None:
    records: list[tuple[str, str, str, float]] = []
    weights: list[float] = []
    for line, row in rows:
        try:
            prompt = _prompt(row)
            a, b = (_model_name(row, key) for key in ("model_a", "model_b"))
            if a == b:
                raise _RowError(f"model_a and model_b are the same model {a!r}")
            winner = str(row.get("winner", "")).strip().lower()
            if winner not in WINNERS:
                raise _RowError(f"winner {row.get('winner')!r} is not one of "
                                f"{', '.join(WINNERS)}")
            weight = _number(row.get("weight", 1.0), "weight")
            if row.get("weight") in ("", None):
                weight = 1.0
            if not weight > 0:
                raise _RowError(f"weight must be > 0, got {row.get('weight')!r}")
        except _RowError as exc:
            fail(line, str(exc))
            continue
        records.append((prompt, a, b, WINNERS[winner]))
        weights.append(weight)
    if not records:
        return None
    battles = Battles.from_records(records)
    return Battles(battles.prompts, battles.models, battles.prompt_idx, battles.model_a,
                   battles.model_b, battles.outcome, np.asarray(weights, dtype=np.float32))


# ---- scores and labels -------------------------------------------------------------------------
def _csv_model_columns(rows: list[tuple[int, dict[str, Any]]]) -> list[str]:
    columns = [c for c in rows[0][1] if c != "prompt" and not _ignored_column(c)]
    models = []
    for column in columns:
        values = [r[column].strip() for _, r in rows[:CSV_SNIFF_ROWS] if r[column].strip()]
        # a column of mostly numbers/labels is a model; its bad values are reported as bad
        # rows later (a text column has almost none)
        if values and sum(map(_is_value, values)) >= 0.5 * len(values):
            models.append(column)
    return models


def _ignored_column(name: str) -> bool:
    lowered = name.strip().lower()
    return "|" in name or lowered in ("id", "index", "") or lowered.endswith("_id")


def _is_value(text: str) -> bool:
    if text.lower() in TRUE_WORDS:
        return True
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def _scores(path: Path, rows: list[tuple[int, dict[str, Any]]], fmt: str, is_csv: bool,
            fail: Callable[[int, str], None]) -> Battles | None:
    key = "scores" if fmt == "scores" else "results"
    models: dict[str, int] = {}
    if is_csv:
        if "prompt" not in rows[0][1]:
            raise DataError(f"{path}: CSV has no 'prompt' column")
        for column in _csv_model_columns(rows):
            models.setdefault(column, len(models))
    # per prompt: per-model sums and counts (a prompt given twice averages its values)
    prompt_pos: dict[str, int] = {}
    sums: list[dict[int, float]] = []
    counts: list[dict[int, int]] = []
    for line, row in rows:
        try:
            prompt = _prompt(row)
            if is_csv:
                values = {m: row[m] for m in models if row[m].strip()}
            else:
                values = row.get(key)
                if not isinstance(values, dict):
                    raise _RowError(f"{key!r} must be an object {{model: value}}")
            parsed = {}
            for model, value in values.items():
                if value is None:
                    continue
                if not isinstance(model, str) or not model.strip():
                    raise _RowError(f"model name {model!r} is not a name")
                parsed[model.strip()] = (_label(value, model) if fmt == "labels"
                                         else _number(value, model))
            if not parsed:
                raise _RowError("no model has a value")
        except _RowError as exc:
            fail(line, str(exc))
            continue
        p = prompt_pos.setdefault(prompt, len(prompt_pos))
        if p == len(sums):
            sums.append({})
            counts.append({})
        for model, value in parsed.items():
            m = models.setdefault(model, len(models))
            sums[p][m] = sums[p].get(m, 0.0) + value
            counts[p][m] = counts[p].get(m, 0) + 1
    if not prompt_pos:
        return None
    matrix = np.full((len(prompt_pos), len(models)), np.nan)
    for p, (row_sums, row_counts) in enumerate(zip(sums, counts, strict=True)):
        for m, total in row_sums.items():
            matrix[p, m] = total / row_counts[m]
    try:
        return Battles.from_scores(list(prompt_pos), list(models), matrix)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from exc


def _prompt(row: dict[str, Any]) -> str:
    prompt = row.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        raise _RowError("missing or empty 'prompt'")
    return prompt


def _model_name(row: dict[str, Any], key: str) -> str:
    name = row.get(key)
    if not isinstance(name, str) or not name.strip():
        raise _RowError(f"missing or empty {key!r}")
    return name.strip()


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        text = value.strip()
        if text.lower() in TRUE_WORDS:
            return TRUE_WORDS[text.lower()]
        try:
            number = float(text)
        except ValueError:
            raise _RowError(f"{what}: {value!r} is not a number") from None
    else:
        raise _RowError(f"{what}: {value!r} is not a number")
    if not math.isfinite(number):
        raise _RowError(f"{what}: {value!r} is not a finite number")
    return number


def _label(value: Any, what: str) -> float:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS:
        return TRUE_WORDS[value.strip().lower()]
    if isinstance(value, int | float) and value in (0, 1):
        return float(value)
    raise _RowError(f"{what}: {value!r} is not true/false")
