"""Battles from production feedback: the decision log's `feedback` rows (POST /v1/feedback)
joined with the logged prompt of each request, for `switchllm train --from-log`.

- `preferred_model`: that model beat the other model of the served pair.
- `winner` ("strong" / "weak" / "tie"): the same by role; "tie" is a tie.
- `rating` (0 bad .. 1 good) of an answer of the weak model: >= 0.5 means the weak model
  sufficed (weak wins), < 0.5 that the strong one was needed (strong wins). A rating of the
  strong model's answer says nothing about what the weak one would have done: no battle.
Rows whose prompt was not logged cannot be learned from (the server needs --log-prompts).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from switchllm.data.battles import A_WINS, B_WINS, TIE, Battles
from switchllm.errors import DataError
from switchllm.serving.decision_log import read_feedback
from switchllm.serving.log_store import shown

GOOD_RATING = 0.5


@dataclass
class FeedbackBattles:
    battles: Battles
    feedback_rows: int
    counts: Counter = field(default_factory=Counter)  # what each row became

    def summary(self) -> str:
        return ", ".join(f"{n} {what}" for what, n in sorted(self.counts.items()))


def _battle(row: dict) -> tuple[str, str, str, float] | str:
    """(prompt, model_a, model_b, outcome), or why the row gives no battle."""
    model, other, strong = row["model"], row["other_model"], row["strong_model"]
    if other is None:
        return "without a second model"
    if row["preferred_model"] is not None:
        loser = other if row["preferred_model"] == model else model
        return (row["prompt"], row["preferred_model"], loser, A_WINS)
    weak = other if model == strong else model
    if row["winner"] is not None:
        outcome = {"strong": A_WINS, "weak": B_WINS, "tie": TIE}[row["winner"]]
        return (row["prompt"], strong, weak, outcome)
    if model == strong:
        return "ratings of the strong model (no battle)"
    return (row["prompt"], strong, weak, B_WINS if row["rating"] >= GOOD_RATING else A_WINS)


def feedback_battles(location: str | Path) -> FeedbackBattles:
    """Battles from the feedback in the decision log at `location` (path or postgresql:// URL)."""
    rows = read_feedback(location)
    path = shown(location)  # for messages: a URL's password hidden
    if not rows:
        raise DataError(f"the decision log {path} holds no feedback yet (clients send it with "
                        "POST /v1/feedback {request_id, rating | preferred_model | winner})")
    counts: Counter = Counter()
    records = []
    for row in rows:
        if not row["prompt"]:
            counts["without a logged prompt"] += 1
            continue
        made = _battle(row)
        if isinstance(made, str):
            counts[made] += 1
            continue
        kind = ("preferences" if row["preferred_model"] is not None
                else "winners" if row["winner"] is not None else "ratings")
        counts[kind] += 1
        records.append(made)
    if not records:
        if counts["without a logged prompt"]:
            raise DataError(
                f"the decision log {path} has {len(rows)} feedback rows but no logged prompts "
                "for them: start the server with --log-prompts (or `log: {prompts: true}`) so "
                "that feedback can be learned from")
        raise DataError(f"none of the {len(rows)} feedback rows in {path} gives a battle "
                        f"({', '.join(f'{n} {w}' for w, n in counts.items())})")
    return FeedbackBattles(Battles.from_records(records), len(rows), counts)
