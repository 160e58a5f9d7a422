"""Where the decision log lives: the `DecisionStore` interface and its SQLite implementation
(`switchllm.serving.postgres_log` holds the Postgres one). `open_store(location)` picks the
backend: a `postgresql://` URL, or else a file path.

A store does four things: create or migrate its tables (`prepare`), write a batch of decision
and feedback rows in one transaction (`write`), and read them back (`decisions`, `feedback`,
`find_decision`, `mean_completion_tokens`). The batching, buffering and retrying around `write`
live in `decision_log.DecisionLog`, the same for every backend.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

from switchllm.errors import SwitchLLMError
from switchllm.serving.log_schema import (
    ADDED_COLUMNS,
    COLUMNS,
    DECISION_TABLE,
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    table_sql,
)

URL_SCHEMES = ("postgresql://", "postgres://")
# How long a writer waits for another writer's lock (`serve --workers N` share one file).
SQLITE_BUSY_TIMEOUT_S = 30.0


class StoreUnavailable(SwitchLLMError):
    """The store cannot take writes now (database down, file locked, disk full): keep the rows
    and try again later."""


class StoreRejected(SwitchLLMError):
    """The store refused the rows themselves: retrying the same batch will not help."""


class DecisionStore(Protocol):
    """One decision log backend. `location` names it in messages (a URL without its password)."""

    location: str

    def prepare(self) -> None:
        """Create the tables, or add the columns an older version lacks. Raises SwitchLLMError
        with a clear message when the store cannot be opened."""

    def write(self, decisions: Sequence[tuple], feedback: Sequence[tuple]) -> None:
        """Insert rows (in COLUMNS / FEEDBACK_COLUMNS order) in one transaction. Raises
        StoreUnavailable or StoreRejected; on either, nothing was written."""

    def decisions(self, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None, newest_first: bool = False,
                  columns: Sequence[str] | None = None) -> Iterator[dict]:
        """Decision rows with since <= ts < until, by time (streamed, not loaded at once)."""

    def feedback(self) -> list[dict]:
        """Every feedback row with the logged `prompt` of its request (None when not logged)."""

    def find_decision(self, request_id: str) -> dict | None:
        """model, routed_model, strong_model and status of one request, or None."""

    def mean_completion_tokens(self) -> dict[str, float]:
        """Mean completion tokens of successful answers, per model."""

    def close(self) -> None: ...


def is_database_url(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def redact_url(url: str) -> str:
    """The URL with any password replaced by ***: for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"{user}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def shown(location: str | os.PathLike) -> str:
    """`location` as it may appear in output and files: a URL without its password."""
    return redact_url(location) if is_database_url(location) else str(location)


def check_columns(columns: Sequence[str] | None) -> list[str]:
    if columns is None:
        return list(COLUMNS)
    unknown = [c for c in columns if c not in COLUMNS]
    if unknown:
        raise SwitchLLMError(f"unknown decision log column(s) {', '.join(unknown)} "
                             f"(columns: {', '.join(COLUMNS)})")
    return list(columns)


def open_store(location: str | os.PathLike) -> DecisionStore:
    """The store at `location`: a postgresql:// URL (needs `pip install switchllm[postgres]`)
    or an SQLite file path."""
    if is_database_url(location):
        from switchllm.serving.postgres_log import PostgresStore

        return PostgresStore(str(location))
    return SQLiteStore(location)


# ---- SQLite ----------------------------------------------------------------------------------
_SQLITE_SCHEMA = ";\n".join([
    table_sql("decisions", DECISION_TABLE),
    "CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)",
    table_sql("feedback", FEEDBACK_TABLE),
]) + ";\n"
# Decision rows go in as multi-row INSERTs of this many rows (under SQLite's 32,766 variables).
# Why not executemany: it runs one sqlite3_step per row, releasing and re-taking the GIL each
# time, and while the event loop keeps a core busy every re-take waits up to the 5 ms switch
# interval. The writer then fell seconds behind at ~2,000 req/s, and a SIGKILL lost 3-30% of
# rows (bench/durability.py) instead of about one flush interval's.
_SQLITE_ROWS_PER_INSERT = 1000


def _sqlite_insert_many(connection: sqlite3.Connection, rows: Sequence[tuple]) -> None:
    one = f"({', '.join('?' * len(COLUMNS))})"
    for start in range(0, len(rows), _SQLITE_ROWS_PER_INSERT):
        chunk = rows[start:start + _SQLITE_ROWS_PER_INSERT]
        connection.execute(
            f"INSERT INTO decisions ({', '.join(COLUMNS)}) VALUES {', '.join([one] * len(chunk))}",
            [value for row in chunk for value in row])
_SQLITE_INSERT_FEEDBACK = (f"INSERT INTO feedback ({', '.join(FEEDBACK_COLUMNS)}) "
                           f"VALUES ({', '.join('?' * len(FEEDBACK_COLUMNS))})")


def _sqlite_migrate(connection: sqlite3.Connection) -> None:
    """Add the columns newer versions write to a log file made by an older one."""
    present = {row[1] for row in connection.execute("PRAGMA table_info(decisions)")}
    for name, sql_type in ADDED_COLUMNS:
        if name not in present:
            connection.execute(f"ALTER TABLE decisions ADD COLUMN {name} {sql_type}")
    connection.execute(
        "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)")
    connection.commit()


def sqlite_connect(path: str | os.PathLike) -> sqlite3.Connection:
    """Open for writing (creating it readable by its owner only: it may hold prompts) and
    migrate the SQLite log at `path`."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        connection = sqlite3.connect(str(path), check_same_thread=False,
                                     timeout=SQLITE_BUSY_TIMEOUT_S)
        connection.execute("PRAGMA journal_mode=WAL")
        # A commit survives a crash of this process (SIGKILL) without an fsync each time: in WAL
        # mode only a power loss can lose the last commits. An fsync per commit stalled the
        # writer on a busy disk, and a SIGKILL then lost far more than one flush interval.
        connection.execute("PRAGMA synchronous=NORMAL")
        connection.executescript(_SQLITE_SCHEMA)
        _sqlite_migrate(connection)
    except (sqlite3.Error, OSError) as exc:
        raise SwitchLLMError(f"cannot open decision log {path}: {exc}") from exc
    return connection


class SQLiteStore:
    """The decision log in one SQLite file (WAL mode). Reads open the file read-only."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        self.location = str(path)
        self._writer: sqlite3.Connection | None = None

    def prepare(self) -> None:
        sqlite_connect(self.path).close()

    def write(self, decisions: Sequence[tuple], feedback: Sequence[tuple]) -> None:
        try:
            if self._writer is None:
                self._writer = sqlite_connect(self.path)
            with self._writer:
                if feedback:
                    self._writer.executemany(_SQLITE_INSERT_FEEDBACK, feedback)
                if decisions:
                    _sqlite_insert_many(self._writer, decisions)
        except SwitchLLMError as exc:  # the file could not be (re)opened
            raise StoreUnavailable(str(exc)) from exc
        except sqlite3.OperationalError as exc:  # locked, disk full, file gone
            self.close()
            raise StoreUnavailable(f"{self.location}: {exc}") from exc
        except sqlite3.Error as exc:
            raise StoreRejected(f"{self.location}: {exc}") from exc

    def _reader(self) -> sqlite3.Connection:
        if not self.path.is_file():
            raise SwitchLLMError(f"no decision log at {self.path} (start `switchllm serve` "
                                 "first, or pass --log PATH or a postgresql:// URL)")
        try:
            connection = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True)
        except sqlite3.Error as exc:
            raise SwitchLLMError(f"cannot read decision log {self.path}: {exc}") from exc
        connection.row_factory = sqlite3.Row
        return connection

    def _not_a_log(self, exc: Exception) -> SwitchLLMError:
        return SwitchLLMError(f"{self.path} is not a switchllm decision log: {exc}")

    def decisions(self, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None, newest_first: bool = False,
                  columns: Sequence[str] | None = None) -> Iterator[dict]:
        wanted = check_columns(columns)
        connection = self._reader()
        try:
            # a file written by an older version lacks the newer columns: read them as None
            present = {row[1] for row in connection.execute("PRAGMA table_info(decisions)")}
            if not present:
                raise self._not_a_log("no decisions table")
            sql, params = decisions_query(wanted, present, since=since, until=until,
                                          limit=limit, newest_first=newest_first,
                                          placeholder="?")
            for row in connection.execute(sql, params):
                yield dict(row)
        except sqlite3.Error as exc:
            raise self._not_a_log(exc) from exc
        finally:
            connection.close()

    def feedback(self) -> list[dict]:
        connection = self._reader()
        try:
            tables = {r[0] for r in connection.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table'")}
            if "feedback" not in tables:
                return []
            selected = ", ".join(f"f.{c}" for c in FEEDBACK_COLUMNS)
            rows = connection.execute(
                f"SELECT {selected}, d.prompt AS prompt FROM feedback f LEFT JOIN decisions d "
                "ON d.request_id = f.request_id ORDER BY f.ts").fetchall()
        except sqlite3.Error as exc:
            raise self._not_a_log(exc) from exc
        finally:
            connection.close()
        return [dict(row) for row in rows]

    def find_decision(self, request_id: str) -> dict | None:
        if not self.path.is_file():
            return None
        try:
            connection = self._reader()
            try:
                row = connection.execute(
                    "SELECT model, routed_model, strong_model, status FROM decisions "
                    "WHERE request_id = ? LIMIT 1", (request_id,)).fetchone()
            finally:
                connection.close()
        except (sqlite3.Error, SwitchLLMError):
            return None
        return dict(row) if row is not None else None

    def mean_completion_tokens(self) -> dict[str, float]:
        if not self.path.is_file():
            return {}
        try:
            connection = self._reader()
            try:
                rows = connection.execute(MEAN_COMPLETION_TOKENS).fetchall()
            finally:
                connection.close()
        except (sqlite3.Error, SwitchLLMError):
            return {}
        return {model: float(mean) for model, mean in rows if mean}

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


MEAN_COMPLETION_TOKENS = (
    "SELECT model, AVG(completion_tokens) FROM decisions WHERE status = 200 AND "
    "completion_tokens IS NOT NULL AND model IS NOT NULL GROUP BY model")


def decisions_query(wanted: Sequence[str], present: set[str], *, since: float | None,
                    until: float | None, limit: int | None, newest_first: bool,
                    placeholder: str) -> tuple[str, list]:
    """The SELECT of decision rows both backends run (`placeholder`: "?" or "%s"): the `wanted`
    columns, NULL for those an older table lacks, since <= ts < until, by time."""
    selected = [c if c in present else f"NULL AS {c}" for c in wanted]
    clauses, params = [], []
    if since is not None:
        clauses.append(f"ts >= {placeholder}")
        params.append(float(since))
    if until is not None:
        clauses.append(f"ts < {placeholder}")
        params.append(float(until))
    sql = (f"SELECT {', '.join(selected)} FROM decisions"
           f"{' WHERE ' + ' AND '.join(clauses) if clauses else ''} ORDER BY ts"
           f"{' DESC' if newest_first else ''}")
    if limit is not None:
        sql += f" LIMIT {placeholder}"
        params.append(int(limit))
    return sql, params
