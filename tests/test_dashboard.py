"""`GET /v1/stats` and `GET /dashboard`: a real server with loopback upstream traffic, its
statistics checked against the decision log (summarised independently, as `switchllm stats`
does), and the page loaded in a real headless chromium whose displayed numbers must match."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from dataclasses import astuple
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from switchllm import routers as router_registry
from switchllm.commands.stats import summarise
from switchllm.serving.config import build_config
from switchllm.serving.decision_log import (
    COLUMNS,
    DecisionLog,
    DecisionRecord,
    read_records,
)
from switchllm.serving.log_store import SQLiteStore
from switchllm.serving.server import create_app
from switchllm.serving.stats import (
    StatsQuery,
    StatsQueryError,
    StatsReader,
    StatsReadError,
    parse_stats_query,
)
from tests.serving_fixtures import FakeUpstream, KeywordRouter, ServerThread

KEY = "dash-key-123"
HARD = [{"role": "user", "content": "Give a proof of the theorem"}]
EASY = [{"role": "user", "content": "hello there"}]
MARKUP = [{"role": "user", "content": "hi <img id=injected src=x> <b>bold</b>"}]


def chromium_path() -> str | None:
    for candidate in (os.environ.get("SWITCHLLM_CHROMIUM"), "/usr/bin/chromium",
                      shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.path.exists(candidate):
            return candidate
    return None


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerThread, Path]]:
    """A keyed server whose log holds known traffic: strong and weak answers, fallbacks, an
    upstream failure and rejected requests."""
    upstream = FakeUpstream().start()
    root = tmp_path_factory.mktemp("dash")
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(router_registry.ROUTER_KINDS, "keyword", "tests.serving_fixtures:KeywordRouter")
        router = KeywordRouter(keywords=["proof"])
        router.calibrate(["a proof", "hi", "hello", "weather"])
        card = router.save(root / "keyword")
        log_path = root / "decisions.sqlite"
        config = build_config(
            routers={"random": "random", "keyword": str(card)}, strong_model="strong",
            weak_model="weak", base_url=upstream.base_url,
            overrides={"log_path": str(log_path), "log_prompts": True, "retries": 0,
                       "backoff": 0.001, "timeout": 2.0, "log_flush_ms": 20.0,
                       "api_keys": [KEY]},
        )
        config.models["strong"].input_price, config.models["strong"].output_price = 10.0, 30.0
        config.models["weak"].input_price, config.models["weak"].output_price = 0.5, 1.0
        server = ServerThread(create_app(config)).start()
    headers = {"authorization": f"Bearer {KEY}", "content-type": "application/json"}

    def chat(model: str, messages: list[dict[str, Any]]) -> int:
        body = json.dumps({"model": model, "messages": messages})
        return httpx.post(server.url + "/v1/chat/completions", content=body, headers=headers,
                          timeout=10).status_code

    statuses = [chat("router-keyword-0.5", HARD) for _ in range(7)]
    statuses += [chat("router-keyword-0.5", EASY) for _ in range(11)]
    statuses += [chat("router-keyword-0.5", MARKUP)]  # shown as text, never as HTML
    statuses += [chat("router-random-1", EASY) for _ in range(9)]  # all weak
    upstream.behaviour("strong").fail_next = 2  # the weak model answers instead: fallbacks
    statuses += [chat("router-keyword-0.5", HARD) for _ in range(2)]
    upstream.behaviour("strong").fail_status = 500
    upstream.behaviour("weak").fail_status = 500  # both down: a 502 for the client
    statuses += [chat("router-keyword-0.5", HARD)]
    upstream.reset()
    statuses += [chat("router-nope-0.5", EASY)]  # unknown router: 404, logged as rejected
    assert statuses.count(200) == 30 and statuses[-2:] == [502, 404], statuses
    deadline = time.time() + 10
    while len(list(read_records(log_path))) < len(statuses) and time.time() < deadline:
        time.sleep(0.02)
    assert len(list(read_records(log_path))) == len(statuses)
    yield server, log_path
    server.stop()
    upstream.stop()


def expected(log_path: Path) -> dict[str, Any]:
    """The ALL row of `switchllm stats`'s summary of the log."""
    rows = summarise(list(read_records(log_path)))
    return next(r for r in rows if r["router"] == "ALL")


def get_stats(server: ServerThread, query: str = "", key: str | None = KEY) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/v1/stats{query}", headers=headers, timeout=10)


# ---- the JSON endpoint --------------------------------------------------------------------
def test_stats_match_the_decision_log(served: tuple[ServerThread, Path]) -> None:
    server, log_path = served
    response = get_stats(server, "?window=1h&latest=5")
    assert response.status_code == 200
    assert response.headers["cache-control"] == "no-store"
    stats = response.json()
    want = expected(log_path)
    totals = stats["totals"]
    assert totals["requests"] == want["requests"] == 32
    assert totals["ok"] == want["ok"] == 30
    assert totals["errors"] == 2 and totals["fallbacks"] == want["fallbacks"] == 2
    assert totals["strong_share"] == pytest.approx(want["strong_share"])
    assert totals["strong"] == 7
    assert totals["cost_usd"] == pytest.approx(want["cost"])
    assert totals["always_strong_cost_usd"] == pytest.approx(want["always_strong_cost"])
    assert totals["saving_usd"] == pytest.approx(want["always_strong_cost"] - want["cost"])
    assert totals["saving_usd"] > 0
    assert {e["status"]: e["count"] for e in stats["errors"]} == {404: 1, 502: 1}
    assert {r["router"]: r["requests"] for r in stats["routers"]} == {
        "keyword": 22, "random": 9, "(rejected)": 1}
    assert {m["model"]: m["requests"] for m in stats["models"]} == {"strong": 7, "weak": 23}
    series = stats["series"]
    assert sum(series["requests"]) == 32 and sum(series["strong"]) == 7
    assert sum(series["models"]["weak"]) == 23
    assert len(series["t"]) == len(series["requests"]) >= 60
    # the latest decisions, newest first, with the logged prompt text
    latest = stats["latest"]
    assert len(latest) == 5 and latest[0]["router"] == "(rejected)"
    assert [d["ts"] for d in latest] == sorted((d["ts"] for d in latest), reverse=True)
    assert latest[1]["status"] == 502 and latest[1]["prompt"] == HARD[0]["content"]
    assert latest[2]["fallback"] is True and latest[2]["model"] == "weak"
    # routing latency percentiles agree with the logged values (histogram bins are ~5% wide)
    routing = [r["routing_ms"] for r in read_records(log_path) if r["routing_ms"] is not None]
    p50 = stats["latency_ms"]["routing"]["p50"]
    assert stats["latency_ms"]["routing"]["count"] == len(routing)
    assert p50 == pytest.approx(float(np.percentile(routing, 50)), rel=0.1, abs=0.02)
    assert stats["latency_ms"]["upstream"]["count"] == 30


def test_stats_need_the_client_key_and_reject_bad_parameters(
    served: tuple[ServerThread, Path],
) -> None:
    server, _ = served
    assert get_stats(server, key=None).status_code == 401
    assert get_stats(server, key="wrong").status_code == 401
    for query, param in (("?window=forever", "window"), ("?window=0", "window"),
                         ("?buckets=100000", "buckets"), ("?latest=-1", "latest"),
                         ("?since=5", "since")):
        response = get_stats(server, query)
        assert response.status_code == 400, query
        assert response.json()["error"]["param"] == param
    assert httpx.post(f"{server.url}/v1/stats", headers={"authorization": f"Bearer {KEY}"},
                      timeout=5).status_code == 405


def test_stats_window_excludes_older_rows(tmp_path: Path) -> None:
    log = DecisionLog(tmp_path / "d.sqlite", flush_s=0.01)
    now = 1_800_000_000.0
    for age in (30, 50, 4000):  # two inside a 15-minute window, one outside
        log.record(_record(now - age, "strong"))
    log.close()
    reader = StatsReader.for_sqlite(tmp_path / "d.sqlite", clock=lambda: now)
    assert reader.stats(StatsQuery(window_s=900))["totals"]["requests"] == 2
    assert reader.stats(StatsQuery(window_s=7200))["totals"]["requests"] == 3


def test_rows_that_arrive_late_are_counted(tmp_path: Path) -> None:
    """Cached buckets are checked against the log: a writer that catches up after an outage
    (rows with old timestamps) changes the answer."""
    path = tmp_path / "d.sqlite"
    log = DecisionLog(path, flush_s=0.01)
    now = 1_800_000_000.0
    log.record(_record(now - 600, "strong"))
    log.close()
    reader = StatsReader.for_sqlite(path, clock=lambda: now)
    first = reader.stats(StatsQuery(window_s=3600))["totals"]
    assert first["requests"] == 1 and first["strong_share"] == 1.0
    log = DecisionLog(path, flush_s=0.01)
    for _ in range(3):
        log.record(_record(now - 1200, "weak"))  # in a bucket already cached
    log.close()
    second = reader.stats(StatsQuery(window_s=3600))["totals"]
    assert second["requests"] == 4 and second["strong_share"] == pytest.approx(0.25)


def test_cached_and_merged_buckets_agree_with_the_log(tmp_path: Path) -> None:
    """As time passes and rows keep arriving, the cached, merged answer stays the log's."""
    path = tmp_path / "d.sqlite"
    writer = SQLiteStore(path)

    def write(records: list[DecisionRecord]) -> None:
        writer.write([astuple(r) for r in records], [])

    now = [1_800_000_000.0]
    reader = StatsReader.for_sqlite(path, clock=lambda: now[0])
    rng = np.random.default_rng(0)
    for step in range(5):
        write([_record(now[0] - age, "strong" if rng.random() < 0.3 else "weak")
               for age in rng.uniform(0, 4000 if step == 0 else 700, 300)])
        for window in (900.0, 3600.0, 86400.0):
            got = reader.stats(StatsQuery(window_s=window))
            since = got["window"]["from"]
            rows = [r for r in read_records(path) if since <= r["ts"] <= now[0]]
            want = next(r for r in summarise(rows) if r["router"] == "ALL")
            assert got["totals"]["requests"] == want["requests"], (step, window)
            assert got["totals"]["strong_share"] == pytest.approx(want["strong_share"])
            assert got["totals"]["cost_usd"] == pytest.approx(want["cost"])
        now[0] += 317.0
    # polled every few seconds, settling buckets are merged from their cached finer parts
    for _ in range(40):
        write([_record(now[0] - rng.uniform(0, 30), "strong")])
        got = reader.stats(StatsQuery(window_s=900.0))
        count = len(list(writer.decisions(since=got["window"]["from"], until=now[0] + 1e-6)))
        assert got["totals"]["requests"] == count
        now[0] += 4.0
    writer.close()


def test_query_parameters() -> None:
    assert parse_stats_query(b"") == StatsQuery()
    assert parse_stats_query(b"window=6h&buckets=30&latest=0") == StatsQuery(21600, 30, 0)
    assert parse_stats_query("window=90").window_s == 90
    assert StatsQuery(window_s=3600, buckets=60).width == 60
    with pytest.raises(StatsQueryError, match="window must be"):
        parse_stats_query("window=nan")


def _record(ts: float, model: str) -> DecisionRecord:
    values: dict[str, Any] = dict.fromkeys(COLUMNS)
    values.update(ts=ts, router="mf", threshold=0.5, win_rate=0.6, model=model,
                  routed_model=model, strong_model="strong", fallback=False, status=200,
                  stream=False, latency_ms=100.0, routing_ms=2.0, prompt_tokens=10,
                  completion_tokens=5, cost_usd=0.001 if model == "weak" else 0.01,
                  strong_cost_usd=0.01)
    return DecisionRecord(**values)


# ---- the page in a real browser -----------------------------------------------------------
def test_dashboard_shows_the_logged_numbers_in_chromium(
    served: tuple[ServerThread, Path],
) -> None:
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = chromium_path()
    if executable is None:
        if os.environ.get("SWITCHLLM_REQUIRE_BROWSER"):
            pytest.fail("no chromium found (apt-get install chromium, or set SWITCHLLM_CHROMIUM)")
        pytest.skip("no chromium on this machine (apt-get install chromium)")
    server, log_path = served
    want = expected(log_path)
    page_response = httpx.get(server.url + "/dashboard", timeout=5)  # the page needs no key
    assert page_response.status_code == 200
    assert "script-src 'self'" in page_response.headers["content-security-policy"]
    problems: list[str] = []
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1366, "height": 900})
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.url + "/dashboard")
            # no key yet: /v1/stats answers 401 and the page asks for one
            page.wait_for_selector("#key-form:not([hidden])", timeout=10_000)
            problems.clear()  # the browser logs the expected 401 as a console error
            page.fill("#key", KEY)
            page.click("#key-form button[type=submit]")
            sync_api.expect(page.locator("#total-requests")).not_to_have_text("–",
                                                                             timeout=10_000)
            shown = {name: page.inner_text(f"#{name}") for name in (
                "total-requests", "strong-share", "saving-usd", "cost-usd",
                "always-strong-cost-usd", "fallbacks", "errors", "ok-count")}
            assert shown["total-requests"] == str(want["requests"])
            assert shown["ok-count"] == str(want["ok"])
            assert shown["strong-share"] == f"{100 * want['strong_share']:.1f}%"
            assert _dollars(shown["saving-usd"]) == pytest.approx(
                want["always_strong_cost"] - want["cost"], rel=1e-3, abs=1e-4)
            assert _dollars(shown["cost-usd"]) == pytest.approx(want["cost"], rel=1e-3,
                                                                abs=1e-4)
            assert _dollars(shown["always-strong-cost-usd"]) == pytest.approx(
                want["always_strong_cost"], rel=1e-3)
            assert shown["fallbacks"] == str(want["fallbacks"])
            assert shown["errors"] == str(want["errors"])
            # charts are drawn, the tables are filled, the prompt is shown as text
            assert page.locator("#chart-share path").count() >= 2
            assert page.locator("#routers tbody tr").count() == 3
            assert page.locator("#latest tbody tr").count() == 15
            assert HARD[0]["content"] in page.inner_text("#latest")
            assert MARKUP[0]["content"] in page.inner_text("#latest")
            assert page.locator("#injected").count() == 0
            # another window: the page asks for it (with the key) and shows the same traffic
            with page.expect_response(lambda r: "/v1/stats?window=24h" in r.url) as answer:
                page.select_option("#window", "24h")
            assert answer.value.status == 200
            assert answer.value.request.headers["authorization"] == f"Bearer {KEY}"
            sync_api.expect(page.locator("#total-requests")).to_have_text(str(want["requests"]))
            # the key survives a reload of the tab (sessionStorage)
            page.reload()
            sync_api.expect(page.locator("#total-requests")).not_to_have_text("–",
                                                                             timeout=10_000)
            assert page.is_hidden("#key-form")
            assert problems == []  # no script errors, no CSP violations
        finally:
            browser.close()


def _dollars(text: str) -> float:
    assert text.startswith("$"), text
    return float(text[1:].replace(",", ""))


def test_dashboard_assets_and_missing_log(tmp_path: Path) -> None:
    config = build_config(routers={"random": "random"}, strong_model="s", weak_model="w",
                          base_url="http://127.0.0.1:9/v1")
    config.log_path = None  # log: {path: null}
    server = ServerThread(create_app(config)).start()
    try:
        for path, kind in (("/dashboard/app.js", "text/javascript"),
                           ("/dashboard/app.css", "text/css"),
                           ("/dashboard/favicon.svg", "image/svg+xml")):
            response = httpx.get(server.url + path, timeout=5)
            assert response.status_code == 200 and response.headers["content-type"].startswith(
                kind)
            assert response.headers["x-content-type-options"] == "nosniff"
        assert httpx.get(server.url + "/dashboard/nope.js", timeout=5).status_code == 404
        response = httpx.get(server.url + "/v1/stats", timeout=5)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "no_decision_log"
        # a foreign Host (DNS rebinding) is refused for the page too
        assert httpx.get(server.url + "/dashboard", headers={"host": "evil.example"},
                         timeout=5).status_code == 403
    finally:
        server.stop()


def test_unreadable_log_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    path.write_bytes(b"not a database, just text" * 100)
    reader = StatsReader.for_sqlite(path)
    with pytest.raises(StatsReadError, match="cannot read the decision log: file is not a "
                                             "database"):
        reader.stats(StatsQuery())
    path.unlink()
    DecisionLog(path).close()  # the log is back: the reader reconnects
    assert reader.stats(StatsQuery())["totals"]["requests"] == 0


def test_reader_never_writes(tmp_path: Path) -> None:
    path = tmp_path / "d.sqlite"
    DecisionLog(path).close()
    reader = StatsReader.for_sqlite(path)
    reader.stats(StatsQuery())
    with pytest.raises(sqlite3.OperationalError, match="readonly"):
        reader._open().execute("DELETE FROM decisions")
    reader.close()


# ---- the same SQL on a real Postgres ------------------------------------------------------
def _postgres_bin() -> Path | None:
    for root in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (root / "initdb").exists():
            return root
    found = shutil.which("initdb")
    return Path(found).parent if found else None


@pytest.mark.slow
def test_postgres_gives_the_same_stats_as_sqlite(tmp_path: Path) -> None:
    """The stats SQL is portable: a Postgres table with the log's columns (booleans for the
    flags) read through a read-only transaction answers as the SQLite log does."""
    import subprocess

    psycopg = pytest.importorskip("psycopg")
    from switchllm.serving.stats import POSTGRES

    pg_bin = _postgres_bin()
    if pg_bin is None:
        pytest.skip("no Postgres server binaries (apt-get install postgresql)")
    # not under tmp_path: pytest's base temp directory is private to its user
    data, port = Path(tempfile.mkdtemp(prefix="switchllm-pg-")), _free_port()
    run_as: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "nobody")
        run_as = ["runuser", "-u", "nobody", "--"]
    subprocess.run([*run_as, str(pg_bin / "initdb"), "-D", str(data), "-A", "trust", "-U",
                    "postgres"], check=True, capture_output=True)
    subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-w", "-l",
                    str(data / "log"), "-o", f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
                    "start"], check=True, capture_output=True)
    try:
        now = 1_800_000_000.0
        rng = np.random.default_rng(1)
        records = [_record(now - age, "strong" if rng.random() < 0.3 else "weak")
                   for age in rng.uniform(0, 5000, 2000)]
        for i, r in enumerate(records[::7]):
            r.status, r.model, r.cost_usd, r.fallback = (502, None, None, False) if i % 2 else (
                200, "weak", 0.001, True)
        sqlite_path = tmp_path / "d.sqlite"
        writer = SQLiteStore(sqlite_path)
        writer.write([astuple(r) for r in records], [])
        writer.close()
        flags, ints = {"fallback", "stream"}, {"status", "prompt_tokens", "completion_tokens"}
        reals = {"ts", "threshold", "win_rate", "latency_ms", "routing_ms", "cost_usd",
                 "strong_cost_usd", "predicted_quality", "expected_cost_usd", "best_cost_usd"}
        def sql_type(c: str) -> str:
            return ("BOOLEAN" if c in flags else "INTEGER" if c in ints
                    else "DOUBLE PRECISION" if c in reals else "TEXT")

        columns = ", ".join(f"{c} {sql_type(c)}" for c in COLUMNS)
        dsn = f"host=127.0.0.1 port={port} user=postgres dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as connection:
            connection.execute(f"CREATE TABLE decisions ({columns})")
            connection.execute("CREATE INDEX decisions_ts ON decisions (ts)")
            with connection.cursor() as cursor:
                cursor.executemany(
                    f"INSERT INTO decisions VALUES ({', '.join(['%s'] * len(COLUMNS))})",
                    [astuple(r) for r in records])
        postgres = StatsReader(
            lambda: psycopg.connect(dsn, options="-c default_transaction_read_only=on"),
            dialect=POSTGRES, clock=lambda: now)
        sqlite = StatsReader.for_sqlite(sqlite_path, clock=lambda: now)
        for window in (900.0, 3600.0, 86400.0):
            a, b = (r.stats(StatsQuery(window_s=window, latest=30)) for r in (postgres, sqlite))
            assert a["totals"] == pytest.approx(b["totals"])
            assert a["series"]["requests"] == b["series"]["requests"]
            assert a["series"]["strong"] == b["series"]["strong"]
            assert a["errors"] == b["errors"] and a["models"] == b["models"]
            assert a["latency_ms"] == b["latency_ms"]
            assert [d["ts"] for d in a["latest"]] == [d["ts"] for d in b["latest"]]
        postgres.close()
    finally:
        subprocess.run([*run_as, str(pg_bin / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
