"""The decision log's rows and columns, shared by every backend (SQLite file, Postgres).

One column list describes both tables; each backend renders it in its own SQL types, so the two
logs always hold the same columns in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from operator import attrgetter


@dataclass
class DecisionRecord:
    ts: float
    router: str | None
    threshold: float | None
    win_rate: float | None
    model: str | None  # model that answered (after any fallback)
    routed_model: str | None  # model the router chose
    strong_model: str
    fallback: bool
    status: int
    stream: bool
    latency_ms: float
    routing_ms: float | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    strong_cost_usd: float | None  # the same tokens at the strong model's prices
    prompt: str | None = None
    request_id: str | None = None  # sent to the client as x-switchllm-request-id
    # route groups (choosing among N models); None for pair routing
    route_group: str | None = None
    predicted_quality: float | None = None  # of the chosen model, in [0, 1]
    expected_cost_usd: float | None = None  # the chooser's estimate for the chosen model
    best_model: str | None = None  # the group's highest-quality candidate for this prompt
    best_cost_usd: float | None = None  # the same tokens at best_model's prices


@dataclass
class FeedbackRecord:
    """One `POST /v1/feedback`: exactly one of rating / preferred_model / winner is set.
    `model` answered the request; `other_model` is the other model of the served pair."""

    ts: float
    request_id: str
    rating: float | None
    preferred_model: str | None
    winner: str | None  # "strong", "weak" or "tie": which model should have answered
    model: str
    other_model: str | None
    strong_model: str


COLUMNS = [f.name for f in fields(DecisionRecord)]
FEEDBACK_COLUMNS = [f.name for f in fields(FeedbackRecord)]

# (column, SQLite declaration), in table order. REAL / INTEGER / TEXT are SQLite's names; the
# Postgres backend maps them with POSTGRES_TYPES.
DECISION_TABLE = [
    ("ts", "REAL NOT NULL"), ("router", "TEXT"), ("threshold", "REAL"), ("win_rate", "REAL"),
    ("model", "TEXT"), ("routed_model", "TEXT"), ("strong_model", "TEXT"),
    ("fallback", "INTEGER NOT NULL DEFAULT 0"), ("status", "INTEGER NOT NULL"),
    ("stream", "INTEGER NOT NULL DEFAULT 0"), ("latency_ms", "REAL"), ("routing_ms", "REAL"),
    ("prompt_tokens", "INTEGER"), ("completion_tokens", "INTEGER"), ("cost_usd", "REAL"),
    ("strong_cost_usd", "REAL"), ("prompt", "TEXT"), ("request_id", "TEXT"),
    ("route_group", "TEXT"), ("predicted_quality", "REAL"), ("expected_cost_usd", "REAL"),
    ("best_model", "TEXT"), ("best_cost_usd", "REAL"),
]
FEEDBACK_TABLE = [
    ("ts", "REAL NOT NULL"), ("request_id", "TEXT NOT NULL"), ("rating", "REAL"),
    ("preferred_model", "TEXT"), ("winner", "TEXT"), ("model", "TEXT"), ("other_model", "TEXT"),
    ("strong_model", "TEXT"),
]
# Columns added after the first release: appended to older tables when a server starts on them.
ADDED_COLUMNS = [(name, decl) for name, decl in DECISION_TABLE[17:]]
POSTGRES_TYPES = {"REAL": "DOUBLE PRECISION", "INTEGER": "BIGINT", "TEXT": "TEXT"}

_decision_row = attrgetter(*COLUMNS)
_feedback_row = attrgetter(*FEEDBACK_COLUMNS)


def decision_row(record: DecisionRecord) -> tuple:
    """The record as a row in COLUMNS order (booleans stored as 0/1, as the table declares)."""
    row = _decision_row(record)
    if row[7].__class__ is bool or row[9].__class__ is bool:
        row = (*row[:7], int(row[7]), row[8], int(row[9]), *row[10:])
    return row


def feedback_row(record: FeedbackRecord) -> tuple:
    return _feedback_row(record)


def postgres_declaration(sqlite_declaration: str) -> str:
    kind, _, rest = sqlite_declaration.partition(" ")
    return f"{POSTGRES_TYPES[kind]} {rest}".strip()


def table_sql(table: str, columns: list[tuple[str, str]], postgres: bool = False) -> str:
    body = ",\n    ".join(f"{name} {postgres_declaration(decl) if postgres else decl}"
                          for name, decl in columns)
    return f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n)"
