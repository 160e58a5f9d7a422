"""LLM-judge prompts (MT-Bench's pairwise and single-answer grading) and verdict parsing.

A judge prompt file (`--judge-prompt FILE`) is the judge's user message with placeholders,
replaced literally (other braces are left alone):

- pairwise: `{question}`, `{answer_a}`, `{answer_b}`; the verdict must be `[[A]]`, `[[B]]` or
  `[[C]]` (tie);
- single: `{question}`, `{answer}`; the verdict must be `Rating: [[N]]`, N from 1 to 10.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchllm.errors import SwitchLLMError

PAIRWISE_SYSTEM = (
    "Please act as an impartial judge and evaluate the quality of the responses provided by two "
    "AI assistants to the user question displayed below. You should choose the assistant that "
    "follows the user's instructions and answers the user's question better. Your evaluation "
    "should consider factors such as the helpfulness, relevance, accuracy, depth, creativity, "
    "and level of detail of their responses. Begin your evaluation by comparing the two "
    "responses and provide a short explanation. Avoid any position biases and ensure that the "
    "order in which the responses were presented does not influence your decision. Do not allow "
    "the length of the responses to influence your evaluation. Do not favor certain names of "
    "the assistants. Be as objective as possible. After providing your explanation, output your "
    'final verdict by strictly following this format: "[[A]]" if assistant A is better, '
    '"[[B]]" if assistant B is better, and "[[C]]" for a tie.'
)
PAIRWISE_USER = (
    "[User Question]\n{question}\n\n"
    "[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n"
    "[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
)
SINGLE_SYSTEM = "You are a helpful assistant."
SINGLE_USER = (
    "[Instruction]\nPlease act as an impartial judge and evaluate the quality of the response "
    "provided by an AI assistant to the user question displayed below. Your evaluation should "
    "consider factors such as the helpfulness, relevance, accuracy, depth, creativity, and "
    "level of detail of the response. Begin your evaluation by providing a short explanation. "
    "Be as objective as possible. After providing your explanation, you must rate the response "
    'on a scale of 1 to 10 by strictly following this format: "[[rating]]", for example: '
    '"Rating: [[5]]".\n\n'
    "[Question]\n{question}\n\n"
    "[The Start of Assistant's Answer]\n{answer}\n[The End of Assistant's Answer]"
)
PLACEHOLDERS = {"pairwise": ("question", "answer_a", "answer_b"),
                "single": ("question", "answer")}

_PAIR_VERDICT = re.compile(r"\[\[\s*([abc])\s*\]\]", re.IGNORECASE)
_RATING = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")
_RATING_LOOSE = re.compile(r"rating\s*:?\s*\[?\s*(\d+(?:\.\d+)?)\s*\]?", re.IGNORECASE)


@dataclass(frozen=True)
class JudgePrompt:
    """The judge's system message (None: none sent) and user-message template for one mode."""

    mode: str
    user: str
    system: str | None = None

    def messages(self, **values: str) -> list[dict[str, Any]]:
        text = self.user
        for name in PLACEHOLDERS[self.mode]:
            text = text.replace("{" + name + "}", values[name])
        messages = [{"role": "system", "content": self.system}] if self.system else []
        return [*messages, {"role": "user", "content": text}]


def judge_prompt(mode: str, path: str | Path | None = None) -> JudgePrompt:
    """The default prompt for `mode`, or the template in `path` (checked for placeholders)."""
    if mode not in PLACEHOLDERS:
        raise SwitchLLMError(f"unknown judge mode {mode!r}; use pairwise or single")
    if path is None:
        if mode == "pairwise":
            return JudgePrompt(mode, PAIRWISE_USER, PAIRWISE_SYSTEM)
        return JudgePrompt(mode, SINGLE_USER, SINGLE_SYSTEM)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise SwitchLLMError(f"cannot read judge prompt {path}: {exc}") from exc
    missing = [n for n in PLACEHOLDERS[mode] if "{" + n + "}" not in text]
    if missing:
        raise SwitchLLMError(
            f"judge prompt {path} lacks the placeholder(s) "
            f"{', '.join('{' + n + '}' for n in missing)} needed in {mode} mode"
        )
    return JudgePrompt(mode, text)


def parse_pairwise(text: str) -> str | None:
    """'A', 'B' or 'C' (tie) from the last well-formed `[[X]]` in the judge's answer, or
    None when there is none."""
    found = _PAIR_VERDICT.findall(text or "")
    return found[-1].upper() if found else None


def parse_rating(text: str) -> float | int | None:
    """The 1-10 rating from the last `[[N]]` (or, failing that, the last `Rating: N`); None
    when there is none or it is out of range."""
    found = _RATING.findall(text or "") or _RATING_LOOSE.findall(text or "")
    if not found:
        return None
    value = float(found[-1])
    if not 1.0 <= value <= 10.0:
        return None
    return int(value) if value.is_integer() else value


def pairwise_winner(verdict_ab: str | None, verdict_ba: str | None) -> str:
    """The battle winner from the verdicts of both orders: in order AB model_a is assistant A,
    in order BA it is assistant B. Anything but two agreeing verdicts is a tie."""
    first = {"A": "model_a", "B": "model_b", "C": "tie"}.get(verdict_ab or "")
    second = {"A": "model_b", "B": "model_a", "C": "tie"}.get(verdict_ba or "")
    if first is None or second is None or first != second:
        return "tie"
    return first
