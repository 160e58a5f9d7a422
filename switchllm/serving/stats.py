"""`GET /v1/stats`: a small JSON summary of the decision log for the dashboard: requests/s, strong
and per-model share, cost against always-strong, latency percentiles, fallbacks and errors over
a time window, and the latest decisions.

Speed with a large log comes from caching, not from reading less: the window is cut into
buckets aligned to multiples of a fixed width (10 s, 1 min, ...), and a bucket that ended more
than `settle_s` ago is aggregated once (SQL GROUP BY over a timestamp-index range) and kept in
memory. Each request then aggregates only the still-open tail and checks the cached buckets
with one indexed COUNT: rows that arrive late (a buffered writer catching up) change the count,
and the buckets whose count changed are aggregated again, so the answer is always what the log
holds now. Latency percentiles come from log-spaced histograms (about 5% wide bins, values
interpolated inside a bin, as Prometheus' histogram_quantile does).

The SQL is plain (GROUP BY ordinals, CASE, COUNT/SUM, ORDER BY ts DESC LIMIT) and runs on
Postgres too (tests/test_dashboard.py checks it gives SQLite's answers on Postgres 15 through
psycopg, flags as BOOLEAN); the two dialect differences are in `SqlDialect`: the placeholder
and how a non-negative real is floored to an integer (SQLite's CAST truncates, Postgres'
rounds).
`ln` is built into Postgres and into SQLite builds with math functions; where SQLite lacks it,
Python's is registered on the connection.
"""

from __future__ import annotations

import math
import sqlite3
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from switchllm.serving.log_store import is_database_url

# Bucket widths in seconds: the smallest one >= window / buckets is used.
WIDTHS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200,
          86400)
MAX_WINDOW_S = 31 * 86400
MAX_BUCKETS = 500
MAX_LATEST = 200
PROMPT_CHARS = 300  # prompts in `latest` are cut to this many characters
# Latency histogram: bin k holds values in [exp(k / BINS_PER_E - LN_OFFSET), next edge).
BINS_PER_E = 20  # about 5% wide: percentiles within about 2.5%
LN_OFFSET = 10.0  # ln(0.01 ms) = -4.6: every clamped value lands on a non-negative bin
MIN_LATENCY_MS = 0.01
PERCENTILES = (50, 90, 95, 99)
CACHED_WIDTHS = 16  # bucket caches kept (one per width in use), least recently used dropped


def _finer(width: int) -> int | None:
    """The width an open bucket is merged from: the largest one dividing it at least 6 times."""
    return max((w for w in WIDTHS if width % w == 0 and w * 6 <= width), default=None)


FINER = {w: _finer(w) for w in WIDTHS}


class StatsQueryError(ValueError):
    """A bad /v1/stats query parameter: `param` names it."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.message, self.param = message, param


class StatsReadError(Exception):
    """The decision log could not be read (the message says why; it holds no secrets: log
    paths and database errors only)."""


@dataclass(frozen=True)
class StatsQuery:
    window_s: float = 3600.0  # how far back from now
    buckets: int = 60  # about this many points in each time series
    latest: int = 20  # how many of the latest decisions to list

    @property
    def width(self) -> int:
        wanted = self.window_s / self.buckets
        return next((w for w in WIDTHS if w >= wanted), WIDTHS[-1])


def parse_stats_query(query_string: bytes | str) -> StatsQuery:
    """`window` (seconds, or with a unit: 90s, 15m, 6h, 7d), `buckets` and `latest`."""
    if isinstance(query_string, bytes):
        query_string = query_string.decode("latin-1")
    try:
        params = parse_qs(query_string, keep_blank_values=True, strict_parsing=False,
                          max_num_fields=20)
    except ValueError as exc:
        raise StatsQueryError(f"invalid query string: {exc}", "query") from None
    known = {"window", "buckets", "latest"}
    unknown = sorted(set(params) - known)
    if unknown:
        raise StatsQueryError(f"unknown query parameter {unknown[0]!r} (use window, buckets, "
                              "latest)", unknown[0])
    values = {name: items[-1] for name, items in params.items()}
    query = StatsQuery()
    window = query.window_s
    if "window" in values:
        window = _parse_duration(values["window"])
    buckets = _parse_int(values, "buckets", query.buckets, 1, MAX_BUCKETS)
    latest = _parse_int(values, "latest", query.latest, 0, MAX_LATEST)
    return StatsQuery(window, buckets, latest)


def _parse_duration(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    raw = text.strip().lower()
    scale = 1
    if raw and raw[-1] in units:
        raw, scale = raw[:-1], units[raw[-1]]
    try:
        seconds = float(raw) * scale
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or not 1 <= seconds <= MAX_WINDOW_S:
        raise StatsQueryError(
            f"window must be a duration from 1s to {MAX_WINDOW_S // 86400}d (seconds, or a "
            f"number with s, m, h or d), not {text!r}", "window")
    return seconds


def _parse_int(values: dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in values:
        return default
    try:
        value = int(values[name])
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise StatsQueryError(f"{name} must be an integer from {low} to {high}, not "
                              f"{values[name]!r}", name)
    return value


@dataclass(frozen=True)
class SqlDialect:
    placeholder: str = "?"
    floor_template: str = "CAST({} AS INTEGER)"  # exact floor for the non-negative values here

    def sql(self, text: str) -> str:
        return text.replace("?", self.placeholder) if self.placeholder != "?" else text

    def floor(self, expression: str) -> str:
        return self.floor_template.format(expression)


SQLITE = SqlDialect()
POSTGRES = SqlDialect(placeholder="%s", floor_template="CAST(FLOOR({}) AS BIGINT)")

# One row per (router, model, strong model, status, fallback) in a bucket.
GroupKey = tuple[str | None, str | None, str | None, int, bool]


@dataclass
class GroupTotals:
    count: int = 0
    cost: float = 0.0
    strong_cost: float = 0.0


@dataclass
class BucketAgg:
    """Everything the stats need from one time bucket."""

    count: int = 0
    groups: dict[GroupKey, GroupTotals] = field(default_factory=dict)
    routing_bins: Counter[int] = field(default_factory=Counter)
    upstream_bins: Counter[int] = field(default_factory=Counter)


def _bin(expression: str, dialect: SqlDialect) -> str:
    low = MIN_LATENCY_MS
    clamped = f"CASE WHEN {expression} < {low} THEN {low} ELSE {expression} END"
    return dialect.floor(f"(ln({clamped}) + {LN_OFFSET}) * {BINS_PER_E}")


class StatsReader:
    """Answers StatsQuery from the decision log through its own read-only connection (the
    writer is never blocked: SQLite WAL readers do not lock out writers). Thread-safe; meant to
    run off the event loop (`asyncio.to_thread`)."""

    def __init__(
        self, connect: Callable[[], Any], *, dialect: SqlDialect = SQLITE,
        settle_s: float = 10.0, clock: Callable[[], float] = time.time,
    ) -> None:
        self._connect = connect
        self.dialect = dialect
        self.settle_s = settle_s
        self.clock = clock
        self._connection: Any = None
        self._lock = threading.Lock()
        self._caches: OrderedDict[int, dict[int, BucketAgg]] = OrderedDict()
        d = dialect
        self._bucket_sql = d.floor("ts / ?")
        self._groups_sql = d.sql(
            f"SELECT {self._bucket_sql}, router, model, strong_model, status, fallback, "
            "COUNT(*), SUM(cost_usd), SUM(strong_cost_usd) FROM decisions "
            "WHERE ts >= ? AND ts < ? GROUP BY 1, 2, 3, 4, 5, 6")
        self._routing_sql = d.sql(
            f"SELECT {self._bucket_sql}, {_bin('routing_ms', d)}, COUNT(*) FROM decisions "
            "WHERE ts >= ? AND ts < ? AND routing_ms IS NOT NULL GROUP BY 1, 2")
        upstream = "(latency_ms - COALESCE(routing_ms, 0))"
        self._upstream_sql = d.sql(
            f"SELECT {self._bucket_sql}, {_bin(upstream, d)}, COUNT(*) FROM decisions "
            "WHERE ts >= ? AND ts < ? AND status = 200 AND latency_ms IS NOT NULL GROUP BY 1, 2")
        self._count_sql = d.sql("SELECT COUNT(*) FROM decisions WHERE ts >= ? AND ts < ?")
        self._bucket_counts_sql = d.sql(
            f"SELECT {self._bucket_sql}, COUNT(*) FROM decisions WHERE ts >= ? AND ts < ? "
            "GROUP BY 1")
        self._latest_sql = d.sql(
            "SELECT ts, router, threshold, win_rate, model, routed_model, strong_model, "
            "fallback, status, stream, latency_ms, routing_ms, cost_usd, strong_cost_usd, "
            "request_id, route_group, prompt FROM decisions ORDER BY ts DESC LIMIT ?")

    @classmethod
    def for_sqlite(cls, path: str | Path, **kwargs: Any) -> StatsReader:
        return cls(lambda: _connect_sqlite_readonly(Path(path)), dialect=SQLITE, **kwargs)

    @classmethod
    def for_postgres(cls, url: str, **kwargs: Any) -> StatsReader:
        def connect() -> Any:
            import psycopg  # the optional `postgres` extra; the log writer checked it at start

            return psycopg.connect(url, connect_timeout=5,
                                   options="-c default_transaction_read_only=on")

        return cls(connect, dialect=POSTGRES, **kwargs)

    @classmethod
    def for_location(cls, location: str | Path, **kwargs: Any) -> StatsReader:
        """The reader for a decision log given as a file path or a postgresql:// URL."""
        if isinstance(location, str) and is_database_url(location):
            return cls.for_postgres(location, **kwargs)
        return cls.for_sqlite(location, **kwargs)

    def close(self) -> None:
        with self._lock:
            self._reset()

    def _reset(self) -> None:
        if self._connection is not None:
            try:
                self._connection.close()
            except Exception:
                pass
            self._connection = None

    # ---- the answer -----------------------------------------------------------------------
    def stats(self, query: StatsQuery) -> dict[str, Any]:
        now = self.clock()
        width = query.width
        first = math.floor((now - query.window_s) / width)
        end = math.floor(now / width) + 1  # exclusive: the open bucket holding `now` is in
        with self._lock:
            try:
                connection = self._open()
                cursor = connection.cursor()
                cursor.execute("BEGIN")  # one snapshot for every query below
                try:
                    found = self._buckets(cursor, width, first, end, now)
                    latest = self._latest(cursor, query.latest)
                finally:
                    connection.rollback()
            except Exception as exc:  # driver errors: a missing, locked or foreign log
                self._reset()  # reconnect next time (a database that was down may be back)
                raise StatsReadError(f"cannot read the decision log: {exc}") from exc
            buckets = [found[b] for b in range(first, end)]
        return _summary(query, now, width, first, buckets, latest)

    def _buckets(self, cursor: Any, width: int, first: int, end: int,
                 now: float) -> dict[int, BucketAgg]:
        """Buckets first..end-1 of `width`: the settled ones from the cache (checked against
        the log), each open one merged from buckets of a finer width (cached in turn when
        settled), down to 1-5 s buckets aggregated directly: a 30-minute bucket that is still
        filling costs a few small queries, not a scan of its rows."""
        settled = min(end, max(first, math.floor((now - self.settle_s) / width)))
        cache = self._cache(width)
        self._fill(cursor, cache, width, first, settled)
        for b in [b for b in cache if b < end - MAX_BUCKETS - 1]:
            del cache[b]
        out = {b: cache[b] for b in range(first, settled)}
        finer = FINER.get(width)
        if finer is None:
            out.update(self._aggregate(cursor, width, settled, end))
            return out
        k = width // finer
        for b in range(settled, end):
            parts = self._buckets(cursor, finer, b * k, min((b + 1) * k,
                                                            math.floor(now / finer) + 1), now)
            out[b] = _merge(parts.values())
        return out

    def _open(self) -> Any:
        if self._connection is None:
            self._connection = self._connect()
        return self._connection

    def _cache(self, width: int) -> dict[int, BucketAgg]:
        cache = self._caches.pop(width, None)
        if cache is None:
            cache = {}
        self._caches[width] = cache
        while len(self._caches) > CACHED_WIDTHS:
            self._caches.popitem(last=False)
        return cache

    def _fill(self, cursor: Any, cache: dict[int, BucketAgg], width: int, first: int,
              settled: int) -> None:
        """Make cache[first:settled] match the log: aggregate the missing buckets, then redo
        those whose row count changed since they were cached."""
        if settled <= first:
            return
        missing = [b for b in range(first, settled) if b not in cache]
        finer = FINER.get(width)
        if finer is not None and missing:  # a bucket that just settled: merge its finer parts
            k, parts = width // finer, self._caches.get(finer, {})
            for b in missing:
                if all(i in parts for i in range(b * k, (b + 1) * k)):
                    cache[b] = _merge(parts[i] for i in range(b * k, (b + 1) * k))
        for lo, hi in _runs(b for b in missing if b not in cache):
            cache.update(self._aggregate(cursor, width, lo, hi))
        cursor.execute(self._count_sql, (first * width, settled * width))
        (count,) = cursor.fetchone()
        if count == sum(cache[b].count for b in range(first, settled)):
            return
        cursor.execute(self._bucket_counts_sql, (width, first * width, settled * width))
        counts = {min(max(int(b), first), settled - 1): n for b, n in cursor.fetchall()}
        stale = [b for b in range(first, settled) if counts.get(b, 0) != cache[b].count]
        for lo, hi in _runs(stale):
            cache.update(self._aggregate(cursor, width, lo, hi))

    def _aggregate(self, cursor: Any, width: int, lo: int, hi: int) -> dict[int, BucketAgg]:
        """Buckets lo..hi-1 from the log (empty ones included)."""
        out = {b: BucketAgg() for b in range(lo, hi)}
        if hi <= lo:
            return out
        span = (width, lo * width, hi * width)

        def bucket(raw: Any) -> BucketAgg:
            return out[min(max(int(raw), lo), hi - 1)]  # float edge cases stay in range

        cursor.execute(self._groups_sql, span)
        for b, router, model, strong, status, fallback, n, cost, strong_cost in cursor:
            agg = bucket(b)
            key = (router, model, strong, int(status), bool(fallback))
            totals = agg.groups.setdefault(key, GroupTotals())
            totals.count += n
            totals.cost += cost or 0.0
            totals.strong_cost += strong_cost or 0.0
            agg.count += n
        for sql, attribute in ((self._routing_sql, "routing_bins"),
                               (self._upstream_sql, "upstream_bins")):
            cursor.execute(sql, span)
            for b, k, n in cursor:
                getattr(bucket(b), attribute)[int(k)] += n
        return out

    def _latest(self, cursor: Any, n: int) -> list[dict[str, Any]]:
        if n == 0:
            return []
        cursor.execute(self._latest_sql, (n,))
        names = [c[0] for c in cursor.description]
        rows = []
        for values in cursor.fetchall():
            row = dict(zip(names, values, strict=True))
            row["fallback"], row["stream"] = bool(row["fallback"]), bool(row["stream"])
            if row["prompt"] is None:
                del row["prompt"]  # prompt logging is off (or it was for this request)
            elif len(row["prompt"]) > PROMPT_CHARS:
                row["prompt"] = row["prompt"][:PROMPT_CHARS] + "…"
            rows.append(row)
        return rows


def _connect_sqlite_readonly(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the reader issues its own BEGIN/ROLLBACK around each answer.
    connection = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False,
                                 isolation_level=None)
    try:
        connection.execute("SELECT ln(1.0)")
    except sqlite3.OperationalError:  # SQLite built without math functions
        connection.create_function("ln", 1, math.log, deterministic=True)
    return connection


def _merge(parts: Iterable[BucketAgg]) -> BucketAgg:
    merged = BucketAgg()
    for part in parts:
        merged.count += part.count
        merged.routing_bins.update(part.routing_bins)
        merged.upstream_bins.update(part.upstream_bins)
        for key, t in part.groups.items():
            totals = merged.groups.setdefault(key, GroupTotals())
            totals.count += t.count
            totals.cost += t.cost
            totals.strong_cost += t.strong_cost
    return merged


def _runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive runs of sorted integers as half-open (lo, hi) ranges."""
    runs: list[tuple[int, int]] = []
    for i in indices:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    return runs


def percentiles(bins: Counter[int]) -> dict[str, float | int | None]:
    """p50..p99 from a log-spaced histogram, interpolated geometrically inside the bin."""
    total = sum(bins.values())
    out: dict[str, float | int | None] = {"count": total}
    ordered = sorted(bins.items())
    for p in PERCENTILES:
        if total == 0:
            out[f"p{p}"] = None
            continue
        rank = p / 100 * total
        seen = 0
        for k, n in ordered:
            if seen + n >= rank:
                inside = (rank - seen) / n
                value = math.exp((k + inside) / BINS_PER_E - LN_OFFSET)
                out[f"p{p}"] = round(max(value, MIN_LATENCY_MS), 3)
                break
            seen += n
    return out


def _share(part: float, whole: float) -> float:
    return part / whole if whole else 0.0


def _summary(query: StatsQuery, now: float, width: int, first: int, buckets: list[BucketAgg],
             latest: list[dict[str, Any]]) -> dict[str, Any]:
    start = first * width
    n_buckets = len(buckets)
    series_t = [start + i * width for i in range(n_buckets)]
    seconds = [float(width)] * n_buckets
    seconds[-1] = max(now - series_t[-1], 1e-3)  # the open bucket so far
    requests, ok, errors, fallbacks, strong, cost, strong_cost = (
        [0] * n_buckets, [0] * n_buckets, [0] * n_buckets, [0] * n_buckets, [0] * n_buckets,
        [0.0] * n_buckets, [0.0] * n_buckets)
    by_model: dict[str, list[int]] = {}
    routers: dict[str, dict[str, Any]] = {}
    statuses: Counter[int] = Counter()
    routing_bins: Counter[int] = Counter()
    upstream_bins: Counter[int] = Counter()
    for i, agg in enumerate(buckets):
        routing_bins.update(agg.routing_bins)
        upstream_bins.update(agg.upstream_bins)
        for (router, model, strong_model, status, fell_back), t in agg.groups.items():
            r = routers.setdefault(router or "(direct)", {
                "router": router or "(direct)", "requests": 0, "ok": 0, "errors": 0,
                "fallbacks": 0, "strong": 0, "cost_usd": 0.0, "always_strong_cost_usd": 0.0})
            requests[i] += t.count
            r["requests"] += t.count
            if status != 200:
                errors[i] += t.count
                r["errors"] += t.count
                statuses[status] += t.count
                continue
            ok[i] += t.count
            r["ok"] += t.count
            if fell_back:
                fallbacks[i] += t.count
                r["fallbacks"] += t.count
            if model is not None and model == strong_model:
                strong[i] += t.count
                r["strong"] += t.count
            cost[i] += t.cost
            strong_cost[i] += t.strong_cost
            r["cost_usd"] += t.cost
            r["always_strong_cost_usd"] += t.strong_cost
            by_model.setdefault(model or "(none)", [0] * n_buckets)[i] += t.count
    total_ok, total_cost, total_strong_cost = sum(ok), sum(cost), sum(strong_cost)
    covered = max(now - start, 1e-3)
    for r in routers.values():
        r["strong_share"] = _share(r.pop("strong"), r["ok"])
        r["saving_usd"] = r["always_strong_cost_usd"] - r["cost_usd"]
    return {
        "object": "stats",
        "generated_at": now,
        "window": {"from": start, "to": now, "seconds": covered,
                   "requested_seconds": query.window_s, "bucket_seconds": width},
        "totals": {
            "requests": sum(requests), "ok": total_ok, "errors": sum(errors),
            "fallbacks": sum(fallbacks), "strong": sum(strong),
            "strong_share": _share(sum(strong), total_ok),
            "requests_per_s": sum(requests) / covered,
            "cost_usd": total_cost, "always_strong_cost_usd": total_strong_cost,
            "saving_usd": total_strong_cost - total_cost,
            "saving_share": _share(total_strong_cost - total_cost, total_strong_cost),
        },
        "models": sorted(({"model": m, "requests": sum(v), "share": _share(sum(v), total_ok)}
                          for m, v in by_model.items()), key=lambda m: -m["requests"]),
        "routers": sorted(routers.values(), key=lambda r: -r["requests"]),
        "errors": [{"status": s, "count": n} for s, n in sorted(statuses.items())],
        "latency_ms": {"routing": percentiles(routing_bins),
                       "upstream": percentiles(upstream_bins)},
        "series": {"t": series_t, "seconds": seconds, "requests": requests, "ok": ok,
                   "errors": errors, "fallbacks": fallbacks, "strong": strong,
                   "cost_usd": cost, "always_strong_cost_usd": strong_cost,
                   "models": by_model},
        "latest": latest,
    }
