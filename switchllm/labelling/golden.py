"""Golden checks: is an answer right, given a reference answer?

- `exact`: equal after normalising whitespace and case;
- `number`: the final number of the answer (GSM8K's `#### 42`, else the last number; commas,
  `$` and `%` ignored) equals the reference's numerically;
- `choice`: the multiple-choice letter (A-J) of the answer (`The answer is (B)`, `Answer: B`,
  a bare `B`) equals the reference's;
- `regex`: `--pattern` matches the answer (`re.search`); `{reference}` in the pattern stands
  for the escaped reference.
"""

from __future__ import annotations

import math
import re

from switchllm.errors import SwitchLLMError

CHECKS = ("exact", "number", "choice", "regex")

_NUMBER = re.compile(r"-?\$?\s*\d[\d,]*(?:\.\d+)?|-?\$?\s*\.\d+")
_HASHES = re.compile(r"####\s*(.+)")
_CHOICE_PATTERNS = (
    re.compile(r"answer\s*(?:is|:)?\s*:?\s*\(?\s*([A-J])\s*\)?(?![A-Za-z])", re.IGNORECASE),
    re.compile(r"\(([A-J])\)"),
    re.compile(r"\b([A-J])[.)]?\s*$"),
)


def normalise(text: str) -> str:
    return " ".join(str(text).split()).lower()


def extract_number(text: str) -> float | None:
    """The answer's final number: after `####` if present, else the last number."""
    text = str(text)
    marked = _HASHES.findall(text)
    if marked:
        text = marked[-1]
    found = _NUMBER.findall(text)
    if not found:
        return None
    cleaned = found[-1].replace(",", "").replace("$", "").replace(" ", "")
    try:
        value = float(cleaned)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def extract_choice(text: str) -> str | None:
    """The multiple-choice letter an answer gives, or None."""
    text = str(text).strip()
    if len(text) == 1 and text.upper() in "ABCDEFGHIJ":
        return text.upper()
    for pattern in _CHOICE_PATTERNS:
        found = pattern.findall(text)
        if found:
            return found[-1].upper()
    return None


def check_answer(check: str, answer: str, reference: str | None,
                 pattern: str | None = None) -> bool:
    """Whether `answer` is right under `check`."""
    if check == "regex":
        if not pattern:
            raise SwitchLLMError("--check regex needs --pattern")
        if "{reference}" in pattern:
            pattern = pattern.replace("{reference}", re.escape(str(reference or "")))
        return re.search(pattern, answer or "") is not None
    if reference is None:
        raise SwitchLLMError(f"--check {check} needs a reference answer (--reference-field)")
    if check == "exact":
        return normalise(answer) == normalise(reference)
    if check == "number":
        got, want = extract_number(answer), extract_number(reference)
        return got is not None and want is not None and math.isclose(got, want, abs_tol=1e-6)
    if check == "choice":
        got, want = extract_choice(answer), extract_choice(reference)
        return got is not None and got == want
    raise SwitchLLMError(f"unknown check {check!r}; use {', '.join(CHECKS)}")


def compile_pattern(pattern: str) -> None:
    """Fail early (one clear line) on a --pattern that is not a regular expression."""
    try:
        re.compile(pattern.replace("{reference}", "x"))
    except re.error as exc:
        raise SwitchLLMError(f"--pattern {pattern!r} is not a regular expression: {exc}") from exc
