"""`serve --workers N`: N uvicorn worker processes behind one listening socket.

Each worker is a fresh (spawned) interpreter that builds its own server, routers and event loop
from the same command line. What they share, and how:

- the socket: bound once by the parent; the kernel hands each new connection to one worker;
- /metrics: prometheus_client's multiprocess mode, through a private temporary directory the
  parent makes before the first worker starts and removes when the last one has exited;
- the decision log: one SQLite file in WAL mode, each worker's writer thread appending in
  batches and waiting out the others' write locks (see decision_log);
- start and stop: the parent reports ready once every worker has finished its start-up, stops
  when a worker cannot start (a broken router fails the same way on every restart), and on
  SIGTERM or SIGINT stops them all, each finishing its requests in flight and flushing its log
  rows before it exits. SIGHUP replaces the workers one by one (uvicorn's rolling restart).
  A worker whose parent dies without stopping it (SIGKILL) stops itself the same way.
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from typing import Any

from switchllm.errors import SwitchLLMError
from switchllm.serving.metrics import MULTIPROC_ENV

# Seconds a worker may take to load its routers before the parent gives up on it.
START_TIMEOUT_S = 600.0
# A worker that does not answer the parent's health ping this long is killed and replaced. The
# ping is answered by a thread of its own, but on a saturated host a busy worker can take a few
# seconds to get the GIL; uvicorn's default (5 s) killed busy workers, losing their log rows.
HEALTHCHECK_TIMEOUT_S = 30


def stop_with_parent(interval_s: float = 0.5) -> None:
    """In a worker: shut down gracefully (SIGTERM to itself: finish requests, flush the log)
    when the parent goes away without stopping it, as after a SIGKILL or a crash of the
    parent, instead of serving on as an orphan nobody supervises."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(interval_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="switchllm-parent-watch", daemon=True).start()


def run_workers(app_factory: str, workers: int, options: dict[str, Any]) -> int:
    """Serve `app_factory` (a "module:function" import string returning an ASGI app) in
    `workers` processes until SIGTERM or SIGINT; the exit status (0: a clean stop)."""
    import uvicorn
    from uvicorn.config import STARTUP_FAILURE
    from uvicorn.supervisors.multiprocess import Multiprocess

    class Supervisor(Multiprocess):
        def init_processes(self) -> None:
            super().init_processes()
            for process in self.processes:
                if not process.wait_until_ready(START_TIMEOUT_S, self.should_exit):
                    return  # the supervision loop sees the failed worker and stops
            pids = ", ".join(str(p.pid) for p in self.processes)
            print(f"switchllm: {len(self.processes)} workers ready (pids {pids}; parent "
                  f"{os.getpid()})", flush=True)

    shared = tempfile.mkdtemp(prefix="switchllm-metrics-")  # mode 0700: this user only
    previous = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = shared  # inherited by every worker, read at its first import
    try:
        config = uvicorn.Config(app_factory, factory=True, workers=workers,
                                timeout_worker_healthcheck=HEALTHCHECK_TIMEOUT_S, **options)
        supervisor = Supervisor(config, sockets=[config.bind_socket()])
        supervisor.run()
    finally:
        if previous is None:
            os.environ.pop(MULTIPROC_ENV, None)
        else:
            os.environ[MULTIPROC_ENV] = previous
        shutil.rmtree(shared, ignore_errors=True)
    if any(p.exitcode == STARTUP_FAILURE for p in supervisor.processes):
        raise SwitchLLMError("a worker failed to start (its error is above); no worker serves")
    # A worker ends its clean shutdown by re-raising the SIGTERM it was stopped with.
    clean = (0, -signal.SIGTERM, None)
    failed = [p.exitcode for p in supervisor.processes if p.exitcode not in clean]
    if failed:
        print(f"switchllm: warning: workers exited with codes {failed}", file=sys.stderr)
        return 1
    return 0
