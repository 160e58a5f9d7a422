"""A real, throw-away Postgres server for tests and bench/postgres_log.py: Debian's `postgresql`
binaries (/usr/lib/postgresql/*/bin), a cluster made by initdb in a temp directory, listening on
a free loopback port, stopped and deleted afterwards. Postgres refuses to run as root, so as root
the cluster belongs to the `nobody` user.

    with TempPostgres() as pg:
        pg.url            # postgresql://switchllm@127.0.0.1:PORT/switchllm
        pg.stop(); pg.start()   # an outage, same port and data

Missing binaries skip the tests that need them, unless SWITCHLLM_REQUIRE_POSTGRES=1 (set by
.ci/run, which installs the package): then they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

USER = "switchllm"
DATABASE = "switchllm"


def postgres_bin_dir() -> Path | None:
    """The newest installed Debian Postgres bin directory, or None."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name)
                   if Path(p).parent.parent.name.isdigit() else 0)
    return Path(found[-1]).parent if found else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class TempPostgres:
    def __init__(self, durable: bool = False) -> None:
        """`durable`: keep fsync on (the bench); tests run without it, for speed."""
        bin_dir = postgres_bin_dir()
        if bin_dir is None:
            raise FileNotFoundError("Postgres binaries not found under /usr/lib/postgresql "
                                    "(apt-get install postgresql)")
        self.bin = bin_dir
        self.durable = durable
        self.port = _free_port()
        # not under pytest's tmp dirs: those are private to root, and the server runs as nobody
        self.root = Path(tempfile.mkdtemp(prefix="switchllm-pg-"))
        self.data = self.root / "data"
        self.user = "nobody" if os.geteuid() == 0 else None
        if self.user:
            shutil.chown(self.root, self.user)
        self.url = f"postgresql://{USER}@127.0.0.1:{self.port}/{DATABASE}"

    def _run(self, *args: str) -> None:
        result = subprocess.run([str(a) for a in args], user=self.user, capture_output=True,
                                text=True, timeout=120, cwd=self.root)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(args[0]).name} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self._server_log()}")

    def _server_log(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def init(self) -> TempPostgres:
        self._run(self.bin / "initdb", "-D", self.data, "-U", USER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync")
        self.start()
        self._run(self.bin / "createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", USER,
                  DATABASE)
        return self

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 "
                   "-c max_connections=200")
        if not self.durable:
            options += " -c fsync=off -c synchronous_commit=off -c full_page_writes=off"
        self._run(self.bin / "pg_ctl", "-D", self.data, "-l", self.root / "server.log", "-o",
                  options, "-w", "-t", "60", "start")

    def stop(self) -> None:
        """Fast shutdown: open sessions are cut, as in a crash of the database host's service."""
        self._run(self.bin / "pg_ctl", "-D", self.data, "-m", "fast", "-w", "-t", "60", "stop")

    def psql(self, sql: str) -> str:
        """Run SQL as the superuser; the output (unaligned, tuples only)."""
        result = subprocess.run(
            [str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", USER, "-d",
             DATABASE, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql],
            capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            raise RuntimeError(f"psql failed: {result.stderr}")
        return result.stdout.strip()

    def close(self) -> None:
        try:
            if (self.data / "postmaster.pid").exists():
                self.stop()
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> TempPostgres:
        try:
            return self.init()
        except BaseException:
            self.close()
            raise

    def __exit__(self, *exc: object) -> None:
        self.close()


def require_postgres() -> None:
    """Skip (or, under CI, fail) when the Postgres binaries are not installed."""
    if postgres_bin_dir() is not None:
        return
    message = ("Postgres binaries not found under /usr/lib/postgresql: apt-get install "
               "postgresql (.ci/run does)")
    if os.environ.get("SWITCHLLM_REQUIRE_POSTGRES") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres() -> Iterator[TempPostgres]:
    """One Postgres server for the test session; tests use their own database (fresh_database)."""
    require_postgres()
    with TempPostgres() as server:
        yield server


_databases = iter(range(1, 1_000_000))


def fresh_database(server: TempPostgres) -> str:
    """A new empty database on `server`; its URL."""
    name = f"t{next(_databases)}"
    server.psql(f"CREATE DATABASE {name}")
    return server.url.rsplit("/", 1)[0] + f"/{name}"
