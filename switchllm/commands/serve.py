"""`switchllm serve`: the OpenAI-compatible routing server (RouteLLM's flags, plus a YAML config
for many upstream models)."""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from urllib.parse import urlsplit

from switchllm.errors import SwitchLLMError
from switchllm.serving import DEFAULT_LOG_PATH, DEFAULT_PORT
from switchllm.serving.config import LOOPBACK_HOSTS, ServingConfig

# How `--workers N` hands the parsed flags to each uvicorn worker process.
WORKER_ARGS_ENV = "SWITCHLLM_SERVE_ARGS"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--routers", nargs="+", help="routers to serve: names (mf, random), "
                        "card directories, or NAME=CARD_DIR")
    parser.add_argument("--strong-model", help="the strong (expensive) model (default: "
                        "RouteLLM's gpt-4-1106-preview)")
    parser.add_argument("--weak-model", help="the weak (cheap) model (default: RouteLLM's "
                        "anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1)")
    parser.add_argument("--config", help="YAML config: models (base URL, key env var, prices), "
                        "routers, server and log settings")
    parser.add_argument("--base-url", help="OpenAI-compatible base URL for models the config "
                        "does not describe")
    parser.add_argument("--api-key", help="upstream API key for models the config does not "
                        "describe (prefer api_key_env in the config)")
    parser.add_argument("--api-key-file", default=None, metavar="PATH",
                        help="a file holding the upstream API key for models the config does "
                             "not describe (unlike --api-key, not shown in the process list)")
    parser.add_argument("--host", default=None, help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=None, help=f"port (default {DEFAULT_PORT})")
    parser.add_argument("--api-keys", default=None, help="comma-separated client API keys "
                        "required as Bearer tokens (default: $SWITCHLLM_API_KEYS; none: open)")
    parser.add_argument("--log", default=None,
                        help=f"decision log SQLite path (default {DEFAULT_LOG_PATH})")
    parser.add_argument("--log-url", default=None, metavar="URL",
                        help="keep the decision log in Postgres instead: postgresql://USER@HOST"
                             "/DB (shared by many servers; password from PGPASSWORD or "
                             "~/.pgpass; needs switchllm[postgres])")
    parser.add_argument("--log-buffer-rows", type=int, default=None, metavar="N",
                        help="decision-log rows held in memory while the log store is away "
                             "(default 200000; beyond that rows are dropped and counted)")
    parser.add_argument("--no-log", action="store_true", help="do not write a decision log")
    parser.add_argument("--allowed-hosts", default=None, metavar="NAMES",
                        help="comma-separated Host names to answer (default: loopback names when "
                             "listening on loopback, else any; '*': any)")
    parser.add_argument("--log-flush-ms", type=float, default=None, metavar="MS",
                        help="decision-log write interval (default 50; SIGHUP writes at once; "
                             "a SIGKILL loses about this much of rows, plus requests in flight)")
    parser.add_argument("--log-prompts", action="store_true",
                        help="store prompt texts in the decision log (for calibrate --from-log)")
    parser.add_argument("--timeout", type=float, default=None,
                        help="deadline per upstream attempt, seconds (a stream: until its first "
                             "token)")
    parser.add_argument("--retries", type=int, default=None, help="retries per upstream model")
    parser.add_argument("--max-body-bytes", type=int, default=None, help="request size limit")
    parser.add_argument("--batch-window-ms", type=float, default=None,
                        help="how long to collect requests into one router call (default 1)")
    parser.add_argument("--router-threads", type=int, default=None,
                        help="torch threads for router compute (default: all cores; use 1 on "
                        "a host busy with other work)")
    parser.add_argument("--header-timeout", type=float, default=None, metavar="S",
                        help="a request's line and headers must arrive within S seconds "
                             "(default 10; slowloris)")
    parser.add_argument("--body-timeout", type=float, default=None, metavar="S",
                        help="a request's body must arrive within S seconds of its headers "
                             "(default 30)")
    parser.add_argument("--keep-alive", type=float, default=None, metavar="S",
                        help="close a kept-alive connection idle for S seconds (default 15)")
    parser.add_argument("--max-connections", type=int, default=None, metavar="N",
                        help="open connections served at once (default 10000, per process); "
                             "beyond it a new connection gets a 503 at once")
    parser.add_argument("--workers", type=int, default=0,
                        help="server processes (RouteLLM's flag; default 1). Each loads the "
                        "routers and runs its own event loop (torch threads: cores / N unless "
                        "--router-threads); /metrics sums all of them; all "
                        "append to one decision log; SIGTERM stops them together")
    parser.add_argument("--ray", action="store_true",
                        help="deploy on Ray Serve (router replicas batching prompts, an OpenAI "
                        "ingress; settings under `ray:` in the config) instead of uvicorn; "
                        "needs the `ray` extra")
    parser.add_argument("--ray-address", default=None, metavar="ADDRESS",
                        help="Ray cluster to join with --ray (default: $RAY_ADDRESS, else a new "
                        "local instance)")
    parser.add_argument("--verbose", action="store_true",
                        help="log every routing decision (INFO) to stderr")


def config_from_args(args: argparse.Namespace):  # -> ServingConfig
    from switchllm.serving import build_config, client_api_keys

    overrides = {
        "host": args.host, "port": args.port, "timeout": args.timeout, "retries": args.retries,
        "max_body_bytes": args.max_body_bytes, "batch_window_ms": args.batch_window_ms,
        "router_threads": args.router_threads,
        "header_timeout_s": getattr(args, "header_timeout", None),
        "body_timeout_s": getattr(args, "body_timeout", None),
        "keep_alive_s": getattr(args, "keep_alive", None),
        "max_connections": getattr(args, "max_connections", None),
        "api_keys": client_api_keys(args.api_keys) or None,
        "log_path": args.log,
        "log_url": getattr(args, "log_url", None),
        "log_buffer_rows": getattr(args, "log_buffer_rows", None),
        "log_prompts": True if args.log_prompts else None,
        "log_flush_ms": args.log_flush_ms,
        "allowed_hosts": ([h.strip() for h in args.allowed_hosts.split(",") if h.strip()]
                          if getattr(args, "allowed_hosts", None) else None),
    }
    from switchllm.serving.config import read_key_file

    api_key = args.api_key
    if getattr(args, "api_key_file", None):
        if api_key:
            raise SwitchLLMError("give --api-key or --api-key-file, not both")
        api_key = read_key_file(args.api_key_file, "--api-key-file")
    config = build_config(
        config_path=args.config, routers=args.routers, strong_model=args.strong_model,
        weak_model=args.weak_model, base_url=args.base_url, api_key=api_key,
        overrides=overrides,
    )
    if args.log and getattr(args, "log_url", None):
        raise SwitchLLMError("give --log PATH (SQLite) or --log-url URL (Postgres), not both")
    if args.no_log:
        config.log_path = config.log_url = None
    return config


def uvicorn_parts() -> dict[str, str]:
    """uvicorn's event loop and HTTP parser: uvloop and httptools (the `uvicorn[standard]`
    extra, a dependency) when importable, else asyncio and h11 (uvloop has no Windows build).
    Measured with `bench/server.py --parts` (docs/SERVING.md, Performance): they serve more
    req/s at 64 clients than asyncio + h11, at lower latency."""
    from importlib.util import find_spec

    return {"loop": "uvloop" if find_spec("uvloop") else "asyncio",
            "http": "httptools" if find_spec("httptools") else "h11"}


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from switchllm.serving import create_app

    if args.workers < 0:
        raise SwitchLLMError(f"--workers must be 0 or more, got {args.workers}")
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    config = config_from_args(args)  # errors surface here, before any worker starts
    if getattr(args, "api_key", None):
        print("switchllm: warning: --api-key is visible to every user of this machine in the "
              "process list; prefer $OPENAI_API_KEY or api_key_env in the config",
              file=sys.stderr)
    if getattr(args, "log_url", None) and urlsplit(args.log_url).password:
        print("switchllm: warning: the password in --log-url is visible to every user of this "
              "machine in the process list; prefer PGPASSWORD or ~/.pgpass", file=sys.stderr)
    where = f"http://{config.host}:{config.port}"
    print(f"switchllm: serving routers {', '.join(config.routers)} "
          f"(strong {config.strong_model}, weak {config.weak_model}) on {where}/v1")
    if config.log_location:
        from switchllm.serving.log_store import open_store

        print(f"switchllm: decision log: {open_store(config.log_location).location}")
    if not config.api_keys and config.host not in LOOPBACK_HOSTS:
        print("switchllm: warning: listening beyond loopback without client API keys "
              "(--api-keys)")
    if getattr(args, "ray", False):
        if args.workers > 1:
            raise SwitchLLMError("--ray and --workers do not combine: Ray Serve runs its own "
                                 "replicas (ray.ingress.num_replicas in the config)")
        from switchllm.serving import ray_app

        return ray_app.run({k: v for k, v in vars(args).items() if not k.startswith("_")},
                           args.ray_address)
    from switchllm.serving.connections import server_options

    limits, notice = server_options(config, for_workers=args.workers > 1)
    if notice and config.max_connections != ServingConfig.max_connections:
        # only a cap the user asked for: the default is lowered quietly on small-limit hosts
        print(f"switchllm: warning: {notice}", file=sys.stderr)
    # the limits' protocol class wraps the HTTP parser uvicorn_parts() picks (httptools)
    options = {"host": config.host, "port": config.port, "log_level": "warning",
               "access_log": False, "lifespan": "on",
               "timeout_graceful_shutdown": config.shutdown_grace_s,
               **uvicorn_parts(), **limits}
    if args.workers > 1:
        from switchllm.serving.workers import run_workers

        if not config.router_threads:
            # N workers each running torch on every core oversubscribe the CPU: spinning
            # threads compete instead of computing. Give each worker its share.
            args.router_threads = max(1, (os.cpu_count() or 1) // args.workers)

        os.environ[WORKER_ARGS_ENV] = json.dumps(
            {k: v for k, v in vars(args).items() if not k.startswith("_")})
        return run_workers("switchllm.commands.serve:app_from_environment", args.workers,
                           options)
    from switchllm.serving.pairs import state_pairs

    app = create_app(config)
    for line in state_pairs(app.routers.routers, config.strong_model, config.weak_model):
        print(f"switchllm: {line}")
    if app.log is not None:
        # SIGHUP would otherwise kill the server unflushed; here it writes the log and serves on.
        signal.signal(signal.SIGHUP, lambda *_: app.log.flush_now())
    uvicorn.run(app, **options)
    return 0


def app_from_environment():  # noqa: ANN201 - the ASGI app of one `--workers` process
    from uvicorn.config import STARTUP_FAILURE

    from switchllm.serving import create_app
    from switchllm.serving.pairs import state_pairs

    args = argparse.Namespace(**json.loads(os.environ[WORKER_ARGS_ENV]))
    if args.verbose:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from switchllm.serving.connections import configure_worker

    try:
        config = config_from_args(args)
        configure_worker(config)  # this process's connection limits and open-files limit
        app = create_app(config)
    except SwitchLLMError as exc:  # e.g. a router that cannot load: the same in every worker
        print(f"switchllm serve: error: {exc}", file=sys.stderr, flush=True)
        # uvicorn's "failed to start" code: the parent stops instead of restarting the worker
        sys.exit(STARTUP_FAILURE)
    state_pairs(app.routers.routers, app.config.strong_model, app.config.weak_model)
    from switchllm.serving.workers import stop_with_parent

    stop_with_parent()
    return app
