"""The decision log: one SQLite row per request (time, router, threshold, win rate, model,
fallback, status, latency, tokens, cost, request id, and the prompt text only when enabled),
and a `feedback` table of the ratings and preferences clients post about those requests.

Writes happen on a background thread in batches, never on the request path: `record` only puts
a tuple on a queue.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from switchllm.errors import SwitchLLMError

SCHEMA = """
CREATE TABLE IF NOT EXISTS decisions (
    ts REAL NOT NULL,
    router TEXT,
    threshold REAL,
    win_rate REAL,
    model TEXT,
    routed_model TEXT,
    strong_model TEXT,
    fallback INTEGER NOT NULL DEFAULT 0,
    status INTEGER NOT NULL,
    stream INTEGER NOT NULL DEFAULT 0,
    latency_ms REAL,
    routing_ms REAL,
    prompt_tokens INTEGER,
    completion_tokens INTEGER,
    cost_usd REAL,
    strong_cost_usd REAL,
    prompt TEXT,
    request_id TEXT,
    route_group TEXT,
    predicted_quality REAL,
    expected_cost_usd REAL,
    best_model TEXT,
    best_cost_usd REAL
);
CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts);
CREATE TABLE IF NOT EXISTS feedback (
    ts REAL NOT NULL,
    request_id TEXT NOT NULL,
    rating REAL,
    preferred_model TEXT,
    winner TEXT,
    model TEXT,
    other_model TEXT,
    strong_model TEXT
);
"""
# Columns added after the first release: (name, SQL type), appended to older files on open.
ADDED_COLUMNS = [("request_id", "TEXT"), ("route_group", "TEXT"), ("predicted_quality", "REAL"),
                 ("expected_cost_usd", "REAL"), ("best_model", "TEXT"), ("best_cost_usd", "REAL")]


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
_INSERT = f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES ({', '.join('?' * len(COLUMNS))})"
_INSERT_FEEDBACK = (f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
                    f"VALUES ({', '.join('?' * len(FEEDBACK_COLUMNS))})")


def _migrate(connection: sqlite3.Connection) -> None:
    """Add the columns newer versions write to a log file made by an older one."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(decisions)")}
    for name, sql_type in ADDED_COLUMNS:
        if name not in present:
            connection.execute(f"ALTER TABLE decisions ADD COLUMN {name} {sql_type}")
    connection.execute(
        "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)")
    connection.commit()


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating it readable by its owner only: it may hold prompts) the log at `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        connection = sqlite3.connect(str(path), check_same_thread=False)
        connection.execute("PRAGMA journal_mode=WAL")
        # A commit survives a crash of this process (SIGKILL) without an fsync each time: in WAL
        # mode only a power loss can lose the last commits. An fsync per commit stalled the
        # writer on a busy disk, and a SIGKILL then lost far more than one flush interval.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(SCHEMA)
        _migrate(connection)
    except sqlite3.Error as exc:
        raise SwitchLLMError(f"cannot open decision log {path}: {exc}") from exc
    return connection


class DecisionLog:
    """Batched background writer. `record` only appends to a deque (no lock hand-off, no
    thread wake-up per request); the writer thread drains it every `flush_s` seconds, at once
    on `flush_now()` (the server calls it on SIGHUP), and on `close()`. A SIGKILL loses the rows
    of about the last `flush_s` seconds plus those of the requests in flight (bench/durability.py
    measures it)."""

    def __init__(
        self, path: str | Path, *, log_prompts: bool = False, flush_s: float = 0.05,
        max_pending: int = 200_000,
    ) -> None:
        self.path = Path(path)
        self.log_prompts = log_prompts
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.dropped = 0
        self._pending: deque[tuple] = deque()
        self._feedback: deque[tuple] = deque()
        self._stop = threading.Event()
        self._wake = threading.Event()
        connect(self.path).close()  # fail at start-up, not on the first request
        self._thread = threading.Thread(target=self._run, name="switchllm-log", daemon=True)
        self._thread.start()

    def record(self, record: DecisionRecord) -> None:
        if not self.log_prompts:
            record.prompt = None
        if len(self._pending) >= self.max_pending:
            self.dropped += 1  # the disk cannot keep up; never slow requests down for the log
            return
        self._pending.append(astuple(record))

    def record_feedback(self, record: FeedbackRecord) -> None:
        self._feedback.append(astuple(record))

    def _drain(self, connection: sqlite3.Connection) -> None:
        if self._feedback:
            rows = []
            while self._feedback:
                rows.append(self._feedback.popleft())
            with connection:
                connection.executemany(_INSERT_FEEDBACK, rows)
        while self._pending:
            rows = []
            while self._pending and len(rows) < 5000:
                rows.append(self._pending.popleft())
            with connection:
                connection.executemany(_INSERT, rows)

    def _run(self) -> None:
        connection = connect(self.path)
        try:
            while not self._stop.is_set():
                self._wake.wait(self.flush_s)
                self._wake.clear()
                self._drain(connection)
            self._drain(connection)
        finally:
            connection.close()

    def flush_now(self) -> None:
        """Write what is pending now rather than at the next interval (safe in a signal handler:
        it only sets an event)."""
        self._wake.set()

    def close(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout)


def read_records(path: str | Path) -> Iterator[dict]:
    path = Path(path)
    if not path.is_file():
        raise SwitchLLMError(
            f"no decision log at {path} (start `switchllm serve` first, or pass --log PATH)"
        )
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        # a file written by an older version lacks the newer columns: read them as None
        present = {row[1] for row in connection.execute("PRAGMA table_info(decisions)")}
        selected = [c if c in present else f"NULL AS {c}" for c in COLUMNS]
        rows = connection.execute(f"SELECT {', '.join(selected)} FROM decisions ORDER BY ts")
        for row in rows:
            yield {column: None for column in COLUMNS} | dict(row)
        connection.close()
    except sqlite3.Error as exc:
        raise SwitchLLMError(f"{path} is not a switchllm decision log: {exc}") from exc


def logged_prompts(path: str | Path) -> list[str]:
    """Prompt texts from the log, for `switchllm calibrate --from-log`."""
    prompts = [r["prompt"] for r in read_records(path) if r["prompt"]]
    if not prompts:
        raise SwitchLLMError(
            f"the decision log {path} holds no prompt texts: prompt logging was off. Start the "
            "server with --log-prompts (or `log: {prompts: true}` in the config), or pass "
            "--prompts FILE"
        )
    return prompts


def find_decision(path: str | Path, request_id: str) -> dict | None:
    """The logged decision of one request id, or None (also when the file is not there)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        row = connection.execute(
            "SELECT model, routed_model, strong_model, status FROM decisions "
            "WHERE request_id = ? LIMIT 1", (request_id,)).fetchone()
        connection.close()
    except sqlite3.Error:
        return None
    return dict(row) if row is not None else None


def read_feedback(path: str | Path) -> list[dict]:
    """Every feedback row, with the logged prompt of its request (None when not logged)."""
    path = Path(path)
    if not path.is_file():
        raise SwitchLLMError(
            f"no decision log at {path} (start `switchllm serve` first, or pass its path)")
    try:
        connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        connection.row_factory = sqlite3.Row
        tables = {r[0] for r in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if "feedback" not in tables:
            connection.close()
            return []
        columns = ", ".join(f"f.{c}" for c in FEEDBACK_COLUMNS)
        rows = connection.execute(
            f"SELECT {columns}, d.prompt AS prompt FROM feedback f LEFT JOIN decisions d "
            "ON d.request_id = f.request_id ORDER BY f.ts").fetchall()
        connection.close()
    except sqlite3.Error as exc:
        raise SwitchLLMError(f"{path} is not a switchllm decision log: {exc}") from exc
    return [dict(row) for row in rows]
