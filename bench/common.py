"""Helpers the bench scripts share: a free loopback port, waiting for a server to listen, and
the loopback fake upstream (tests/serving_fixtures.py) run in a child process."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time

from tests.serving_fixtures import FakeUpstream, free_port

__all__ = ["free_port", "run_upstream", "wait_port"]


def run_upstream(port: int) -> None:
    """Serve a FakeUpstream on `port` until killed (a multiprocessing target)."""

    async def main() -> None:
        await FakeUpstream(record=False).serve(port)
        await asyncio.Event().wait()

    asyncio.run(main())


def wait_port(port: int, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until something listens on `port`; SystemExit if `process` exits first or on timeout."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"the server exited with code {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on port {port}")
