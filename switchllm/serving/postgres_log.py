"""The decision log in Postgres (`switchllm serve --log-url postgresql://...`), so that servers on
many machines share one log. Same tables and columns as the SQLite file (log_schema), in
Postgres types: REAL -> DOUBLE PRECISION, INTEGER -> BIGINT. Needs psycopg 3
(`pip install 'switchllm[postgres]'`).

Writes use one connection held by the log's writer thread, a COPY per batch inside one
transaction; a lost connection is reopened on the next batch. Reads open their own short-lived
read-only connection. The password never appears in messages: `location` is the URL with it
replaced by ***. Prefer PGPASSWORD or ~/.pgpass to a password in the URL.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit

from switchllm.errors import SwitchLLMError
from switchllm.serving.log_schema import (
    ADDED_COLUMNS,
    COLUMNS,
    DECISION_TABLE,
    FEEDBACK_COLUMNS,
    FEEDBACK_TABLE,
    postgres_declaration,
    table_sql,
)
from switchllm.serving.log_store import (
    MEAN_COMPLETION_TOKENS,
    StoreRejected,
    StoreUnavailable,
    check_columns,
    decisions_query,
    redact_url,
)

# Serialises schema creation when many replicas start at once (CREATE TABLE IF NOT EXISTS
# itself can race). Any constant works; this one spells "swllm".
_SCHEMA_LOCK = 0x73776C6C6D
CONNECT_TIMEOUT_S = 3


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise SwitchLLMError("a postgresql:// decision log needs psycopg 3: "
                             "pip install 'switchllm[postgres]'") from None
    return psycopg


def _text(value: Any) -> Any:
    # Postgres TEXT cannot hold NUL, which JSON lets a client send ("\u0000"): one such prompt
    # would fail its whole batch.
    if value.__class__ is str and "\x00" in value:
        return value.replace("\x00", "\ufffd")
    return value


class PostgresStore:
    """A decision log in the Postgres database at `url`."""

    def __init__(self, url: str, connect_timeout: float = CONNECT_TIMEOUT_S) -> None:
        self.url = url
        self.location = redact_url(url)
        self.connect_timeout = connect_timeout
        self._password = urlsplit(url).password
        self._writer: Any = None

    # ---- connections --------------------------------------------------------------------
    def _message(self, exc: BaseException) -> str:
        text = str(exc).strip() or type(exc).__name__
        if self._password:
            text = text.replace(self._password, "***")
        return text

    def _connect(self, **options: Any) -> Any:
        psycopg = _psycopg()
        try:
            return psycopg.connect(self.url, connect_timeout=max(1, round(self.connect_timeout)),
                                   application_name="switchllm", **options)
        except psycopg.ProgrammingError as exc:  # a malformed URL: no retry will fix it
            raise SwitchLLMError(f"bad decision log URL {self.location}: "
                                 f"{self._message(exc)}") from None
        except psycopg.Error as exc:
            raise StoreUnavailable(f"cannot connect to decision log {self.location}: "
                                   f"{self._message(exc)}") from None

    def _drop_writer(self) -> None:
        if self._writer is not None:
            try:
                self._writer.close()
            except Exception:  # noqa: BLE001 - a broken connection may fail to close; drop it
                pass
            self._writer = None

    # ---- schema -------------------------------------------------------------------------
    def prepare(self) -> None:
        psycopg = _psycopg()
        try:
            connection = self._connect(autocommit=True)
        except StoreUnavailable as exc:
            raise SwitchLLMError(str(exc)) from None
        try:
            with connection.transaction():
                connection.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
                connection.execute(table_sql("decisions", DECISION_TABLE, postgres=True))
                connection.execute("CREATE INDEX IF NOT EXISTS decisions_ts ON decisions (ts)")
                connection.execute(table_sql("feedback", FEEDBACK_TABLE, postgres=True))
                # a table made by an older version: add the columns newer versions write
                for name, declaration in ADDED_COLUMNS:
                    connection.execute(f"ALTER TABLE decisions ADD COLUMN IF NOT EXISTS {name} "
                                       f"{postgres_declaration(declaration)}")
                connection.execute(
                    "CREATE INDEX IF NOT EXISTS decisions_request_id ON decisions (request_id)")
        except psycopg.Error as exc:
            raise SwitchLLMError(f"cannot create the decision log tables in {self.location}: "
                                 f"{self._message(exc)}") from None
        finally:
            connection.close()

    # ---- writes -------------------------------------------------------------------------
    def write(self, decisions: Sequence[tuple], feedback: Sequence[tuple]) -> None:
        psycopg = _psycopg()
        if self._writer is None or self._writer.closed:
            self._writer = self._connect(autocommit=True)
        connection = self._writer
        try:
            with connection.transaction(), connection.cursor() as cursor:
                if feedback:
                    with cursor.copy(f"COPY feedback ({', '.join(FEEDBACK_COLUMNS)}) "
                                     "FROM STDIN") as copy:
                        for row in feedback:
                            copy.write_row([_text(v) for v in row])
                if decisions:
                    with cursor.copy(f"COPY decisions ({', '.join(COLUMNS)}) "
                                     "FROM STDIN") as copy:
                        for row in decisions:
                            copy.write_row([_text(v) for v in row])
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            self._drop_writer()
            raise StoreUnavailable(f"{self.location}: "
                                   f"{self._message(exc)}") from None
        except psycopg.Error as exc:
            if connection.broken:
                self._drop_writer()
                raise StoreUnavailable(f"{self.location}: "
                                       f"{self._message(exc)}") from None
            raise StoreRejected(f"{self.location}: {self._message(exc)}") from None

    def close(self) -> None:
        self._drop_writer()

    # ---- reads --------------------------------------------------------------------------
    def _reader(self) -> Any:
        try:
            connection = self._connect(autocommit=False)
        except StoreUnavailable as exc:
            raise SwitchLLMError(str(exc)) from None
        connection.read_only = True
        return connection

    @staticmethod
    def _present(connection: Any, table: str) -> set[str]:
        rows = connection.execute(
            "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s) AND attnum > 0 "
            "AND NOT attisdropped", (table,)).fetchall()
        return {row[0] for row in rows}

    def decisions(self, *, since: float | None = None, until: float | None = None,
                  limit: int | None = None, newest_first: bool = False,
                  columns: Sequence[str] | None = None) -> Iterator[dict]:
        psycopg = _psycopg()
        from psycopg.rows import dict_row

        wanted = check_columns(columns)
        connection = self._reader()
        try:
            present = self._present(connection, "decisions")
            if not present:
                raise SwitchLLMError(
                    f"no decision log in {self.location} yet (no decisions table): start "
                    "`switchllm serve --log-url URL` first")
            sql, params = decisions_query(wanted, present, since=since, until=until,
                                          limit=limit, newest_first=newest_first,
                                          placeholder="%s")
            # a server-side cursor: a log of millions of rows is streamed, not loaded at once
            with connection.cursor(name="switchllm_decisions", row_factory=dict_row) as cursor:
                cursor.itersize = 5000
                cursor.execute(sql, params)
                yield from cursor
        except psycopg.Error as exc:
            raise SwitchLLMError(f"cannot read decision log {self.location}: "
                                 f"{self._message(exc)}") from None
        finally:
            connection.close()

    def feedback(self) -> list[dict]:
        psycopg = _psycopg()
        from psycopg.rows import dict_row

        connection = self._reader()
        try:
            if not self._present(connection, "feedback"):
                return []
            selected = ", ".join(f"f.{c}" for c in FEEDBACK_COLUMNS)
            with connection.cursor(row_factory=dict_row) as cursor:
                cursor.execute(f"SELECT {selected}, d.prompt AS prompt FROM feedback f "
                               "LEFT JOIN decisions d ON d.request_id = f.request_id "
                               "ORDER BY f.ts")
                return list(cursor)
        except psycopg.Error as exc:
            raise SwitchLLMError(f"cannot read decision log {self.location}: "
                                 f"{self._message(exc)}") from None
        finally:
            connection.close()

    def find_decision(self, request_id: str) -> dict | None:
        psycopg = _psycopg()
        from psycopg.rows import dict_row

        try:
            connection = self._reader()
        except SwitchLLMError:
            return None
        try:
            with connection.cursor(row_factory=dict_row) as cursor:
                cursor.execute("SELECT model, routed_model, strong_model, status FROM decisions "
                               "WHERE request_id = %s LIMIT 1", (request_id,))
                return cursor.fetchone()
        except psycopg.Error:
            return None
        finally:
            connection.close()

    def mean_completion_tokens(self) -> dict[str, float]:
        psycopg = _psycopg()
        try:
            connection = self._reader()
        except SwitchLLMError:
            return {}
        try:
            rows = connection.execute(MEAN_COMPLETION_TOKENS).fetchall()
        except psycopg.Error:
            return {}
        finally:
            connection.close()
        return {model: float(mean) for model, mean in rows if mean}
