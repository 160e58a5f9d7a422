"""Serving: everything between an OpenAI-style request and the upstream model that answers it.

Layers, bottom up (each module has one job):

- `config`: the serving configuration (YAML + flags), model names (`router-mf-s0.3`), prompts;
- `http_pool`: the pooled keep-alive HTTP client for upstream calls;
- `upstream`: upstream calls with retries, deadlines and fallback;
- `routing`: routers loaded for serving, thresholds, micro-batched win rates;
- `decision_log`: the log of every routing decision (written off the hot path), kept in a
  `log_store.DecisionStore`: an SQLite file or Postgres (`postgres_log`);
- `metrics`: Prometheus metrics;
- `server`: the OpenAI-compatible ASGI application.

`Controller` (switchllm.controller) and the `switchllm` commands use the names below.
"""

from switchllm.serving.config import (
    DEFAULT_HOST,
    DEFAULT_LOG_PATH,
    DEFAULT_PORT,
    ConfigError,
    ModelNameError,
    ModelSpec,
    RouteRequest,
    ServingConfig,
    build_config,
    check_threshold,
    client_api_keys,
    load_yaml,
    parse_router_model,
    prompt_text,
    routers_from,
)
from switchllm.serving.decision_log import DecisionLog, DecisionRecord, logged_prompts, read_records
from switchllm.serving.routing import RouterSet, choose, routable_text, router_pair

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_LOG_PATH",
    "DEFAULT_PORT",
    "ConfigError",
    "DecisionLog",
    "DecisionRecord",
    "ModelNameError",
    "ModelSpec",
    "RouteRequest",
    "RouterSet",
    "ServingConfig",
    "build_config",
    "check_threshold",
    "choose",
    "client_api_keys",
    "create_app",
    "load_yaml",
    "logged_prompts",
    "parse_router_model",
    "prompt_text",
    "read_records",
    "routable_text",
    "router_pair",
    "routers_from",
]


def create_app(config: ServingConfig, routers: RouterSet | None = None):  # noqa: ANN201
    """The ASGI application for `config` (imported on first use: the HTTP stack is not needed
    by `Controller` or the offline commands)."""
    from switchllm.serving.server import create_app as _create_app

    return _create_app(config, routers)
