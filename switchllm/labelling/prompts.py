"""Reading prompts for labelling: JSONL, JSON lists, CSV or plain text (one prompt a line),
with the prompt field detected among the common names, or the prompts of the decision log."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchllm.errors import DataError
from switchllm.serving.config import content_text, prompt_text

# tried in this order when --prompt-field is not given
PROMPT_FIELDS = ("prompt", "question", "instruction", "query", "input", "turns", "messages")


@dataclass
class PromptItem:
    """One prompt to label: the text routers see, the chat sent to the candidates, and the
    source record (for a golden reference column)."""

    text: str
    messages: list[dict[str, Any]]
    record: dict[str, Any] = field(default_factory=dict)


def read_prompts(path: str | Path, prompt_field: str | None = None) -> list[PromptItem]:
    """Every prompt in `path`. Raises a DataError naming the fields found when no prompt field
    can be detected."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"prompts file {path} does not exist")
    suffix = path.suffix.lower()
    try:
        if suffix == ".txt":
            lines = path.read_text(encoding="utf-8").splitlines()
            return [_item(line.strip(), {}) for line in lines if line.strip()]
        records = _records(path, suffix)
    except UnicodeDecodeError as exc:
        raise DataError(f"{path} is not UTF-8 text: {exc}") from exc
    if not records:
        raise DataError(f"{path} holds no prompts")
    name = prompt_field or detect_prompt_field(path, records[0])
    items = []
    for number, record in enumerate(records, start=1):
        if name not in record:
            raise DataError(f"{path}: record {number} has no field {name!r} "
                            f"(fields: {', '.join(sorted(record))})")
        text, messages = prompt_of(record[name])
        if not text.strip():
            raise DataError(f"{path}: record {number}: field {name!r} holds no prompt text")
        items.append(PromptItem(text, messages, record))
    return items


def detect_prompt_field(path: Path, record: Mapping[str, Any]) -> str:
    for name in PROMPT_FIELDS:
        if name in record:
            return name
    raise DataError(
        f"{path}: no prompt field found; the records have the fields "
        f"{', '.join(sorted(record)) or '(none)'}; expected one of {', '.join(PROMPT_FIELDS)} "
        "or name it with --prompt-field"
    )


def prompt_of(value: Any) -> tuple[str, list[dict[str, Any]]]:
    """A field's value -> (prompt text, chat messages). Strings are one user message; a
    `turns` list is its first turn (MT-Bench); an OpenAI `messages` list is the whole chat,
    routed on its last user message."""
    if isinstance(value, str):
        return value, [{"role": "user", "content": value}]
    if isinstance(value, Sequence) and value:
        if all(isinstance(v, Mapping) for v in value):
            messages = [dict(v) for v in value]
            return prompt_text(messages), messages
        first = value[0]
        text = first if isinstance(first, str) else content_text(first)
        return text, [{"role": "user", "content": text}]
    return "", []


def logged_prompt_items(log_path: str | Path) -> list[PromptItem]:
    """The prompts logged by `switchllm serve --log-prompts`."""
    from switchllm.serving.decision_log import logged_prompts
    from switchllm.serving.log_store import is_database_url

    if not is_database_url(log_path) and not Path(log_path).is_file():
        raise DataError(f"decision log {log_path} does not exist")
    return [_item(text, {}) for text in logged_prompts(log_path)]


def select(items: list[PromptItem], *, dedup: bool = True, sample: int | None = None,
           seed: int = 0) -> list[PromptItem]:
    """De-duplicate by prompt text (first occurrence kept) and draw `sample` prompts at
    random, keeping the file order."""
    if dedup:
        seen: set[str] = set()
        unique = []
        for item in items:
            key = item.text.strip()
            if key not in seen:
                seen.add(key)
                unique.append(item)
        items = unique
    if sample is not None:
        if sample <= 0:
            raise DataError(f"--sample must be positive, got {sample}")
        if sample < len(items):
            chosen = sorted(random.Random(seed).sample(range(len(items)), sample))
            items = [items[i] for i in chosen]
    return items


def _item(text: str, record: dict[str, Any]) -> PromptItem:
    return PromptItem(text, [{"role": "user", "content": text}], record)


def _records(path: Path, suffix: str) -> list[dict[str, Any]]:
    if suffix == ".csv":
        csv.field_size_limit(2**31 - 1)
        with path.open(newline="", encoding="utf-8") as handle:
            try:
                return [dict(row) for row in csv.DictReader(handle)]
            except csv.Error as exc:
                raise DataError(f"{path}: malformed CSV: {exc}") from exc
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise DataError(f"{path}: unknown prompts file type {suffix!r}; use .jsonl, .json, "
                        ".csv or .txt")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"{path}:{exc.lineno}: invalid JSON: {exc.msg}") from exc
        records = items
    else:
        records = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: invalid JSON: {exc.msg}") from exc
    for number, record in enumerate(records, start=1):
        if not isinstance(record, dict):
            raise DataError(f"{path}: record {number} is {type(record).__name__}, "
                            "not an object")
    return records
