"""Serving configuration: upstream models, routers, server and log settings, and the
`router-<name>-<threshold>` / `router-<name>-s<share>` model names clients ask for.

A YAML file (``switchllm serve --config FILE``) looks like::

    routers: [mf, random]            # or a mapping {name: router card dir or kind}
    strong_model: gpt-4o
    weak_model: llama-3.1-8b
    models:
      gpt-4o:
        base_url: https://api.openai.com/v1
        api_key_env: OPENAI_API_KEY   # the NAME of an env var; the key never sits in the file
        input_price: 2.50             # dollars per 1M input tokens
        output_price: 10.00           # dollars per 1M output tokens
      llama-3.1-8b:
        base_url: http://localhost:8000/v1
        upstream_model: meta-llama/Llama-3.1-8B-Instruct   # name sent upstream, if different
    server: {host: 127.0.0.1, port: 6060, timeout: 60, retries: 2, max_body_bytes: 4194304,
             header_timeout_s: 10, body_timeout_s: 30, keep_alive_s: 15, max_connections: 10000}
    log: {path: switchllm-decisions.sqlite, prompts: false}
    # or a Postgres log shared by many servers (password: PGPASSWORD or ~/.pgpass):
    # log: {url: "postgresql://switchllm@db.internal/switchllm", buffer_rows: 200000}

RouteLLM's router config (top-level keys named after a router kind, e.g. ``mf: {...}``) is
accepted too: a ``card``/``checkpoint_path`` naming a local router card directory is used.
"""

from __future__ import annotations

import math
import os
import re
import stat
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from switchllm.errors import SwitchLLMError
from switchllm.serving.config_models import LogSettings, ModelSettings, ServerSettings, validated
from switchllm.serving.log_store import is_database_url

DEFAULT_PORT = 6060
DEFAULT_HOST = "127.0.0.1"
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
DEFAULT_LOG_PATH = "switchllm-decisions.sqlite"
DEFAULT_LOG_BUFFER_ROWS = 200_000
ROUTER_PREFIX = "router-"
# RouteLLM's default pair for serving (its openai_server's --strong-model / --weak-model).
DEFAULT_STRONG_MODEL = "gpt-4-1106-preview"
DEFAULT_WEAK_MODEL = "anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1"
API_KEYS_ENV = "SWITCHLLM_API_KEYS"


class ConfigError(SwitchLLMError):
    """The serving configuration is malformed."""


class ModelNameError(SwitchLLMError):
    """A requested model name cannot be served. `status` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400, code: str = "invalid_model") -> None:
        super().__init__(message)
        self.status = status
        self.code = code


@dataclass
class ModelSpec:
    """One upstream model behind an OpenAI-compatible endpoint."""

    name: str
    base_url: str = "https://api.openai.com/v1"
    api_key_env: str | None = None
    api_key_file: str | None = None  # a file holding the key (read once, at start)
    api_key: str | None = field(default=None, repr=False)  # from --api-key or the file
    upstream_model: str | None = None
    input_price: float = 0.0  # dollars per 1M tokens
    output_price: float = 0.0
    output_tokens: float | None = None  # expected completion tokens (route groups' cost)

    @property
    def sent_name(self) -> str:
        return self.upstream_model or self.name

    def resolve_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env) or None
        return None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (prompt_tokens * self.input_price + completion_tokens * self.output_price) / 1e6


@dataclass
class ServingConfig:
    strong_model: str
    weak_model: str
    models: dict[str, ModelSpec]
    routers: dict[str, str]  # served router name -> router spec for load_router (kind or dir)
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    timeout: float = 60.0  # seconds per upstream attempt
    connect_timeout: float = 5.0
    retries: int = 2  # extra attempts on the same model for 429/5xx/connection errors
    backoff: float = 0.05  # seconds, doubled per retry
    max_body_bytes: int = 4 * 1024 * 1024
    batch_window_ms: float = 1.0
    router_threads: int = 0  # torch threads for router compute; 0: all cores
    max_prompt_chars: int = 16_000  # routers read at most this much of a prompt
    shutdown_grace_s: float = 10.0  # on SIGTERM, wait this long for requests in flight
    # what one client connection may hold (serving.connections; docs/SERVING.md)
    header_timeout_s: float = 10.0  # the request line and headers must arrive within this
    body_timeout_s: float = 30.0  # the whole body must arrive within this of the headers
    keep_alive_s: float = 15.0  # an idle kept-alive connection is closed after this
    max_connections: int = 10_000  # beyond this, new connections get an immediate 503
    max_header_bytes: int = 65_536  # a larger request head gets a 431
    # an upstream answer (or one stream event) larger than this is a failed call: fallback
    max_response_bytes: int = 64 * 2**20
    # Host header names served (DNS rebinding); None: loopback names when bound to loopback,
    # any name otherwise; ["*"]: any name
    allowed_hosts: list[str] | None = None
    api_keys: list[str] = field(default_factory=list, repr=False)
    log_path: str | None = DEFAULT_LOG_PATH
    log_prompts: bool = False
    log_flush_ms: float = 50.0  # decision-log write interval (bench/durability.py)
    log_url: str | None = field(default=None, repr=False)  # postgresql://...; wins over log_path
    log_buffer_rows: int = DEFAULT_LOG_BUFFER_ROWS  # held while the log store is away
    routes: dict[str, Any] = field(default_factory=dict)  # group name -> groups.RouteGroup

    def __post_init__(self) -> None:
        for role, name in (("strong_model", self.strong_model), ("weak_model", self.weak_model)):
            if not name:
                raise ConfigError(f"{role} is not set (use --{role.replace('_', '-')})")
            self.models.setdefault(name, ModelSpec(name=name))
        if self.strong_model == self.weak_model:
            raise ConfigError(f"strong and weak model are the same: {self.strong_model!r}")
        if not self.routers:
            raise ConfigError("no routers configured (use --routers)")
        if not 0.0 <= self.shutdown_grace_s <= 3600.0:
            raise ConfigError(f"shutdown_grace_s must be in [0, 3600], got {self.shutdown_grace_s}")
        if self.max_prompt_chars < 1:
            raise ConfigError(f"max_prompt_chars must be positive, got {self.max_prompt_chars}")
        if not 1.0 <= self.log_flush_ms <= 60_000.0:
            raise ConfigError(f"log flush_ms must be in [1, 60000], got {self.log_flush_ms}")
        if self.log_url is not None and not is_database_url(self.log_url):
            raise ConfigError(f"log url must start with postgresql:// (got "
                              f"{self.log_url.partition('://')[0] or self.log_url[:20]!r}...); "
                              "for an SQLite file use log path")
        if not 1 <= self.log_buffer_rows <= 10_000_000:
            raise ConfigError(f"log buffer_rows must be in [1, 10000000], got "
                              f"{self.log_buffer_rows}")
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not 0.1 <= getattr(self, name) <= 3600.0:
                raise ConfigError(f"{name} must be in [0.1, 3600] seconds, "
                                  f"got {getattr(self, name)}")
        if self.max_connections < 1:
            raise ConfigError(f"max_connections must be positive, got {self.max_connections}")
        if self.max_response_bytes < 1024:
            raise ConfigError(f"max_response_bytes must be at least 1024, "
                              f"got {self.max_response_bytes}")
        if not 1024 <= self.max_header_bytes <= 16 * 1024 * 1024:
            raise ConfigError(f"max_header_bytes must be in [1024, 16777216], "
                              f"got {self.max_header_bytes}")
        if not 0.0 <= self.batch_window_ms <= 100.0:
            raise ConfigError(f"batch_window_ms must be in [0, 100], got {self.batch_window_ms}")

    @property
    def log_location(self) -> str | None:
        """Where the decision log goes: the Postgres URL, else the SQLite path, else None."""
        return self.log_url or self.log_path

    def served_host_names(self) -> set[str] | None:
        """The Host names to answer (lower case, no port), or None for any."""
        if self.allowed_hosts is not None:
            names = {h.lower().strip("[]") for h in self.allowed_hosts}
            return None if "*" in names else names
        if self.host in LOOPBACK_HOSTS:
            return set(LOOPBACK_HOSTS)
        return None

    def other_model(self, model: str) -> str | None:
        if model == self.strong_model:
            return self.weak_model
        if model == self.weak_model:
            return self.strong_model
        return None


# ---- model names ---------------------------------------------------------------------------
@dataclass(frozen=True)
class RouteRequest:
    """What a `router-...` model name asks for: a router and a threshold or a strong share."""

    router: str
    threshold: float | None = None
    strong_share: float | None = None


def parse_router_model(model: str) -> RouteRequest | None:
    """`router-mf-0.116` -> RouteRequest("mf", threshold=0.116); `router-sw_ranking-s0.3` ->
    RouteRequest("sw_ranking", strong_share=0.3). None when `model` is not a router name.

    The router name may contain underscores or dashes: the value is what follows the last dash.
    """
    if not model.startswith(ROUTER_PREFIX):
        return None
    rest = model[len(ROUTER_PREFIX) :]
    name, sep, value = rest.rpartition("-")
    if name.endswith("-"):  # router-mf--0.1: a negative threshold, reported as out of range
        name, value = name[:-1], "-" + value
    if not sep or not name or not value:
        raise ModelNameError(
            f"model {model!r} must look like router-<router>-<threshold> "
            "(e.g. router-mf-0.11593) or router-<router>-s<share> (e.g. router-mf-s0.3)",
            status=400,
        )
    if value[0] in "sS":
        share = _parse_unit(value[1:], f"strong share in model {model!r}")
        return RouteRequest(router=name, strong_share=share)
    return RouteRequest(router=name, threshold=_parse_unit(value, f"threshold in model {model!r}"))


def check_threshold(threshold: Any, what: str = "threshold") -> float:
    """A float in [0, 1], or a ModelNameError naming the bad value."""
    if isinstance(threshold, bool) or not isinstance(threshold, int | float | str):
        raise ModelNameError(f"{what} must be a number in [0, 1], got {threshold!r}")
    return _parse_unit(str(threshold), what)


def _parse_unit(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ModelNameError(f"{what} is not a number: {text!r}") from None
    if math.isnan(value) or not 0.0 <= value <= 1.0:
        raise ModelNameError(f"{what} must be in [0, 1], got {text}")
    return value


# ---- prompts -------------------------------------------------------------------------------
def prompt_text(messages: Sequence[Any]) -> str:
    """The text a router routes on: the last user message (RouteLLM routes on the last message),
    with list-of-parts content reduced to its text parts (images are not routed on)."""
    chosen = None
    for message in reversed(messages):
        if isinstance(message, Mapping) and message.get("role") == "user":
            chosen = message
            break
    if chosen is None and messages:
        chosen = messages[-1]
    if not isinstance(chosen, Mapping):
        return ""
    return content_text(chosen.get("content"))


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, Sequence):
        texts = [
            part.get("text", "")
            for part in content
            if isinstance(part, Mapping) and part.get("type") in ("text", "input_text")
        ]
        return "\n".join(t for t in texts if isinstance(t, str))
    return ""


# ---- loading -------------------------------------------------------------------------------
def load_yaml(path: str | Path) -> dict[str, Any]:
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return data


def routers_from(value: Any, raw: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Normalise `routers` (a list of names, a comma string, or {name: spec}) to name -> spec,
    honouring RouteLLM-style per-router config (`mf: {checkpoint_path: DIR}`) in `raw`."""
    from switchllm.routers import ROUTER_KINDS

    raw = raw or {}
    if value is None:
        return {}
    if isinstance(value, str):
        value = [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, Mapping):
        items = [(str(k), str(v) if v is not None else str(k)) for k, v in value.items()]
    elif isinstance(value, Sequence):
        # "name=card_dir" serves a card under a short name; a bare name is its own spec
        items = [(str(v).partition("=")[0], str(v).partition("=")[2] or str(v)) for v in value]
    else:
        raise ConfigError(f"routers must be a list or a mapping, got {type(value).__name__}")
    routers: dict[str, str] = {}
    for name, spec in items:
        section = raw.get(name)
        if name in ROUTER_KINDS and isinstance(section, Mapping):
            for key in ("card", "checkpoint_path"):
                candidate = section.get(key)
                if candidate and Path(str(candidate)).is_dir():
                    spec = str(candidate)
        routers[name] = spec
    return routers


def build_config(
    *,
    config_path: str | Path | None = None,
    routers: Any = None,
    strong_model: str | None = None,
    weak_model: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    overrides: Mapping[str, Any] | None = None,
    raw: Mapping[str, Any] | None = None,
) -> ServingConfig:
    """Merge a YAML file (or an already-read mapping `raw`) with command-line values
    (command line wins)."""
    if raw is None:
        raw = load_yaml(config_path) if config_path else {}
    where = str(config_path) if config_path else "config"
    models: dict[str, ModelSpec] = {}
    model_section = raw.get("models") or {}
    if not isinstance(model_section, Mapping):
        raise ConfigError(f"{where}: models must be a mapping of model name -> settings")
    for name, settings in model_section.items():
        if isinstance(settings, Mapping) and "api_key" in settings:
            raise ConfigError(
                f"{where}: models.{name}.api_key: put keys in an environment variable and "
                "name it with api_key_env; keys never belong in config files"
            )
        kwargs = validated(ModelSettings, settings or {}, f"{where}: models.{name}", ConfigError)
        _check_key_sources(kwargs, f"{where}: models.{name}")
        spec = ModelSpec(name=str(name), **kwargs)
        if spec.api_key_file:
            spec.api_key = read_key_file(spec.api_key_file, f"{where}: models.{name}.api_key_file")
        models[str(name)] = spec

    strong = strong_model or raw.get("strong_model")
    weak = weak_model or raw.get("weak_model")
    from switchllm.serving.providers import resolve_model

    strong = strong or DEFAULT_STRONG_MODEL
    weak = weak or DEFAULT_WEAK_MODEL
    for name in (strong, weak):
        if name and name not in models:
            # litellm-style: provider prefixes, $OPENAI_BASE_URL, --base-url / --api-key
            models[name] = resolve_model(name, base_url=base_url, api_key=api_key)
    for spec in models.values():
        if api_key and not spec.api_key_env and not spec.api_key_file:
            spec.api_key = api_key
        if not spec.api_key_env and not spec.api_key and spec.base_url.startswith(
            "https://api.openai.com"
        ):
            spec.api_key_env = "OPENAI_API_KEY"

    kwargs = validated(ServerSettings, raw.get("server") or {}, f"{where}: server", ConfigError)
    log = validated(LogSettings, raw.get("log") or {}, f"{where}: log", ConfigError)
    if "path" in log:
        kwargs["log_path"] = None if log["path"] in (None, False, "") else str(log["path"])
    if "url" in log:
        kwargs["log_url"] = None if log["url"] in (None, False, "") else str(log["url"])
    if log.get("buffer_rows") is not None:
        kwargs["log_buffer_rows"] = log["buffer_rows"]
    if log.get("prompts") is not None:
        kwargs["log_prompts"] = log["prompts"]
    if log.get("flush_ms") is not None:
        kwargs["log_flush_ms"] = log["flush_ms"]
    for key, value in (overrides or {}).items():
        if value is not None:
            kwargs[key] = value
    served = routers_from(routers if routers else raw.get("routers"), raw)
    routes = _routes(raw.get("routes"), models, where)
    for group in routes.values():  # a group's router is served even if `routers` omits it
        served.setdefault(group.router, group.router)
    return ServingConfig(
        strong_model=strong or "",
        weak_model=weak or "",
        models=models,
        routers=served,
        routes=routes,
        **kwargs,
    )


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_key_sources(settings: Mapping[str, Any], where: str) -> None:
    """Upstream keys come from an environment variable or a file, never from the config
    itself: refuse an api_key_env that is not a variable name (a pasted key, most likely) and a
    base_url carrying credentials. The offending value is never repeated in the error."""
    env = settings.get("api_key_env")
    if env is not None and not _ENV_NAME.fullmatch(env):
        raise ConfigError(f"{where}.api_key_env must be the NAME of an environment variable "
                          "(letters, digits, _); it looks like a key, and keys never belong in "
                          "config files: export it and name the variable here")
    if "api_key_env" in settings and "api_key_file" in settings:
        raise ConfigError(f"{where}: give api_key_env or api_key_file, not both")
    base_url = settings.get("base_url")
    if base_url and urlsplit(base_url).password is not None:
        raise ConfigError(f"{where}.base_url carries a password; put the key in an environment "
                          "variable (api_key_env) or a file (api_key_file)")


def read_key_file(path: str, what: str) -> str:
    """The key in `path` (surrounding whitespace stripped); a ConfigError when it cannot be
    read or is empty. A warning when others may read it."""
    file = Path(path).expanduser()
    try:
        key = file.read_text().strip()
        mode = file.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read {file}: {exc.strerror}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{what}: {file} is not text") from None
    if not key:
        raise ConfigError(f"{what}: {file} is empty")
    if mode & (stat.S_IRGRP | stat.S_IROTH):
        warnings.warn(f"{what}: {file} is readable by other users "
                      f"(chmod 600 {file})", stacklevel=2)
    return key


def _routes(section: Any, models: dict[str, ModelSpec], where: str) -> dict[str, Any]:
    from switchllm.serving.groups import parse_routes

    return parse_routes(section, models, where)


def client_api_keys(flag_value: str | None) -> list[str]:
    """Client keys from --api-keys (comma separated) or $SWITCHLLM_API_KEYS."""
    source = flag_value if flag_value is not None else os.environ.get(API_KEYS_ENV, "")
    return [k.strip() for k in source.split(",") if k.strip()]
