"""The decision log: one row per request (time, router, threshold, win rate, model, fallback,
status, latency, tokens, cost, request id, and the prompt text only when enabled), and a
`feedback` table of the ratings and preferences clients post about those requests. It lives in
an SQLite file (the default) or in Postgres (a `postgresql://` URL): see log_store.

Writes happen on a background thread in batches, never on the request path: `record` only puts
a tuple on a queue. While the store cannot take writes (database down, file locked) the rows stay
buffered in memory, up to `max_pending`, and are written when it comes back.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from switchllm.errors import SwitchLLMError
from switchllm.serving.log_schema import (
    ADDED_COLUMNS,
    COLUMNS,
    FEEDBACK_COLUMNS,
    DecisionRecord,
    FeedbackRecord,
    decision_row,
    feedback_row,
)
from switchllm.serving.log_store import (
    DecisionStore,
    StoreRejected,
    StoreUnavailable,
    is_database_url,
    open_store,
    shown,
    sqlite_connect,
)

__all__ = [
    "ADDED_COLUMNS", "COLUMNS", "DEFAULT_MAX_PENDING", "FEEDBACK_COLUMNS", "DecisionLog",
    "DecisionRecord", "FeedbackRecord", "LogStatus", "connect", "find_decision",
    "logged_prompts", "read_decisions", "read_feedback", "read_records",
]

log = logging.getLogger("switchllm.serving.decision_log")

DEFAULT_MAX_PENDING = 200_000  # rows held in memory while the store is away; then dropped
BATCH_ROWS = 5000
RETRY_MAX_S = 1.0  # longest wait between two tries while the store is away
CLOSE_WAIT_S = 10.0  # at shutdown, how long to keep trying a store that is away


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating and migrating it) the SQLite log at `path`."""
    return sqlite_connect(path)


@dataclass(frozen=True)
class LogStatus:
    """What /metrics reports about the log writer."""

    buffered: int  # rows waiting to be written
    capacity: int  # at most this many are buffered; more are dropped
    written: int
    dropped: int
    store_up: bool  # the last write succeeded
    write_failures: int  # failed write attempts (each outage counts its retries)


class DecisionLog:
    """Batched background writer. `record` only appends to a deque (no lock hand-off, no
    thread wake-up per request); the writer thread drains it every `flush_s` seconds, at once
    on `flush_now()` (the server calls it on SIGHUP), and on `close()`. A SIGKILL loses the rows of
    about the last `flush_s` seconds plus those of the requests in flight (bench/durability.py
    measures it).

    When a write fails because the store is away, the rows stay buffered (pending plus the
    batch in hand, at most `max_pending`; beyond that new rows are dropped and counted) and the
    writer retries with a backoff up to RETRY_MAX_S. The outage and the recovery are logged
    once each, not per row."""

    def __init__(
        self, location: str | Path, *, log_prompts: bool = False, flush_s: float = 0.05,
        max_pending: int = DEFAULT_MAX_PENDING, close_wait_s: float = CLOSE_WAIT_S,
    ) -> None:
        self.store: DecisionStore = open_store(location)
        self.location = self.store.location  # for messages: a URL's password is hidden
        self.url = str(location) if is_database_url(location) else None
        self.path = None if self.url else Path(location)
        self.log_prompts = log_prompts
        self.flush_s = flush_s
        self.max_pending = max_pending
        self.close_wait_s = close_wait_s
        self.dropped = 0
        self.written = 0
        self.write_failures = 0
        self._pending: deque[tuple] = deque()
        self._feedback: deque[tuple] = deque()
        self._batch: list[tuple] = []  # taken from _pending, not yet written
        self._batch_feedback: list[tuple] = []
        self._down_since: float | None = None  # monotonic time of the first failed write
        self._warned_full = False
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.store.prepare()  # fail at start-up, not on the first request
        self._thread = threading.Thread(target=self._run, name="switchllm-log", daemon=True)
        self._thread.start()

    # ---- request path -------------------------------------------------------------------
    def record(self, record: DecisionRecord) -> None:
        if not self.log_prompts:
            record.prompt = None
        if len(self._pending) + len(self._batch) >= self.max_pending:
            self.dropped += 1  # the store cannot keep up; never slow requests down for the log
            if not self._warned_full:
                self._warned_full = True
                log.error("decision log buffer is full (%d rows): dropping new rows until %s "
                          "takes writes again", self.max_pending, self.location)
            return
        self._pending.append(decision_row(record))

    def record_feedback(self, record: FeedbackRecord) -> None:
        self._feedback.append(feedback_row(record))

    def status(self) -> LogStatus:
        return LogStatus(
            buffered=len(self._pending) + len(self._batch) + len(self._feedback)
            + len(self._batch_feedback),
            capacity=self.max_pending, written=self.written, dropped=self.dropped,
            store_up=self._down_since is None, write_failures=self.write_failures)

    def find(self, request_id: str) -> dict | None:
        """The logged decision of one request id (blocking: call it off the event loop)."""
        return open_store(self.url or self.path).find_decision(request_id)

    # ---- writer thread ------------------------------------------------------------------
    def _take(self) -> None:
        while self._feedback:
            self._batch_feedback.append(self._feedback.popleft())
        while self._pending and len(self._batch) < BATCH_ROWS:
            self._batch.append(self._pending.popleft())

    def _write_batch(self) -> None:
        try:
            self.store.write(self._batch, self._batch_feedback)
        except StoreRejected as exc:
            self._write_rows_one_by_one(exc)
            return
        self.written += len(self._batch)
        self._batch, self._batch_feedback = [], []

    def _write_rows_one_by_one(self, first: StoreRejected) -> None:
        """The store refused the batch (a table dropped, a value it cannot hold): recreate the
        tables, then write row by row so that one bad row does not lose its neighbours. If the
        store goes away meanwhile, what is not yet written stays in the batch."""
        log.warning("decision log %s refused a batch (%s); retrying row by row", self.location,
                    first)
        self.store.prepare()
        batch, feedback = self._batch, self._batch_feedback
        while batch or feedback:
            rows, notes = ([batch[0]], []) if batch else ([], [feedback[0]])
            try:
                self.store.write(rows, notes)
                self.written += len(rows)
            except StoreRejected as exc:
                self.dropped += 1
                log.error("decision log %s refused a row, dropped: %s", self.location, exc)
            (batch if rows else feedback).pop(0)

    def _drain(self) -> bool:
        """Write everything buffered; False when the store is away (rows stay buffered)."""
        while True:
            if not self._batch and not self._batch_feedback:
                self._take()
                if not self._batch and not self._batch_feedback:
                    return True
            try:
                self._write_batch()
            except (StoreUnavailable, SwitchLLMError) as exc:
                self.write_failures += 1
                if self._down_since is None:
                    self._down_since = time.monotonic()
                    # exc names the store (a URL without its password)
                    log.error("decision log cannot take writes: %s; buffering up to %d rows in "
                              "memory and retrying", exc, self.max_pending)
                return False
            if self._down_since is not None:
                log.warning("decision log %s takes writes again after %.1f s; writing the "
                            "buffered rows (%d dropped while it was away)", self.location,
                            time.monotonic() - self._down_since, self.dropped)
                self._down_since = None
                self._warned_full = False

    def _run(self) -> None:
        delay = self.flush_s
        try:
            while not self._stop.is_set():
                self._wake.wait(delay)
                self._wake.clear()
                delay = self.flush_s if self._drain() else min(
                    RETRY_MAX_S, max(delay * 2, 0.1))
            deadline = time.monotonic() + self.close_wait_s
            while not self._drain() and time.monotonic() < deadline:
                time.sleep(min(0.2, max(0.0, deadline - time.monotonic())))
            lost = self.status().buffered
            if lost:
                log.error("decision log %s was away at shutdown: %d buffered rows were not "
                          "written", self.location, lost)
        finally:
            self.store.close()

    def flush_now(self) -> None:
        """Write what is pending now rather than at the next interval (safe in a signal handler:
        it only sets an event)."""
        self._wake.set()

    def close(self, timeout: float | None = None) -> None:
        """Write what is buffered and stop; waits up to `close_wait_s` (plus a second) for a
        store that is away."""
        self._stop.set()
        self._wake.set()
        self._thread.join(self.close_wait_s + 1.0 if timeout is None else timeout)


# ---- reading: a path or a postgresql:// URL -------------------------------------------------
def read_decisions(location: str | os.PathLike, *, since: float | None = None,
                   until: float | None = None, limit: int | None = None,
                   newest_first: bool = False,
                   columns: Sequence[str] | None = None) -> list[dict]:
    """Decision rows with since <= ts < until (epoch seconds), oldest first (newest first with
    `newest_first`), at most `limit`, each a dict of `columns` (default: all COLUMNS; a column
    an older log lacks reads as None). For the latest N decisions:
    `read_decisions(loc, limit=N, newest_first=True)`."""
    return list(open_store(location).decisions(since=since, until=until, limit=limit,
                                               newest_first=newest_first, columns=columns))


def read_records(location: str | os.PathLike) -> Iterator[dict]:
    """Every decision row, oldest first, streamed."""
    return open_store(location).decisions()


def logged_prompts(location: str | os.PathLike) -> list[str]:
    """Prompt texts from the log, for `switchllm calibrate --from-log`."""
    prompts = [r["prompt"] for r in open_store(location).decisions(columns=["prompt"])
               if r["prompt"]]
    if not prompts:
        raise SwitchLLMError(
            f"the decision log {shown(location)} holds no prompt texts: prompt logging was "
            "off. Start the server with --log-prompts (or `log: {prompts: true}` in the "
            "config), or pass --prompts FILE"
        )
    return prompts


def find_decision(location: str | os.PathLike, request_id: str) -> dict | None:
    """The logged decision of one request id, or None (also when there is no log)."""
    return open_store(location).find_decision(request_id)


def read_feedback(location: str | os.PathLike) -> list[dict]:
    """Every feedback row, with the logged prompt of its request (None when not logged)."""
    return open_store(location).feedback()


