"""The YAML config's `models:`, `server:` and `log:` sections as pydantic models: each setting's
type, and an error that names the file, the section and the setting (``serve.yaml:
server.port must be an integer, got 'abc'``), never a pydantic dump.

`config.build_config` validates each section with these and builds the `ModelSpec`s and the
`ServingConfig` (dataclasses the rest of the code uses) from the result. Only settings the file
gives are passed on, so the dataclass defaults stay the one place defaults live (a setting
given as `null` keeps its default, except `log.path: null`, which turns the log off). Strict
types: a YAML string is not a number, `true` is not a port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from switchllm.errors import SwitchLLMError


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    keeps_null: ClassVar[bool] = False  # pass `null` settings on instead of the default


class ModelSettings(_Section):
    """One entry under `models:`."""

    base_url: str | None = None  # default: OpenAI's
    api_key_env: str | None = None  # the NAME of an env var holding the key
    api_key_file: str | None = None  # or a file holding it (never the key itself)
    upstream_model: str | None = None  # the name sent upstream, if different
    input_price: float = Field(default=0.0, ge=0)  # dollars per 1M input tokens
    output_price: float = Field(default=0.0, ge=0)
    output_tokens: float | None = None  # expected completion tokens (route groups' cost)


class ServerSettings(_Section):
    """The `server:` section."""

    host: str | None = None
    port: int | None = None
    timeout: float | None = None
    connect_timeout: float | None = None
    retries: int | None = None
    backoff: float | None = None
    max_body_bytes: int | None = None
    batch_window_ms: float | None = None
    router_threads: int | None = None
    max_prompt_chars: int | None = None
    shutdown_grace_s: float | None = None
    allowed_hosts: list[str] | None = None
    header_timeout_s: float | None = None
    body_timeout_s: float | None = None
    keep_alive_s: float | None = None
    max_connections: int | None = None
    max_header_bytes: int | None = None
    max_response_bytes: int | None = None


class LogSettings(_Section):
    """The `log:` section (`path: null` or `false`: no decision log)."""

    model_config = ConfigDict(extra="forbid", strict=False)
    keeps_null: ClassVar[bool] = True
    path: str | bool | None = None
    url: str | bool | None = None  # postgresql://...; false or null: none
    buffer_rows: int | None = Field(default=None, strict=True)
    prompts: bool | None = None
    flush_ms: float | None = Field(default=None, strict=True)


_KINDS = {int: "an integer", float: "a number", str: "a string", bool: "true or false"}


def validated(model: type[_Section], section: Any, where: str, config_error: type[SwitchLLMError]
              ) -> dict[str, Any]:
    """The settings `section` gives, checked against `model`, or `config_error` naming the
    first bad one. `where` is e.g. "serve.yaml: server"."""
    if section is None:
        return {}
    if not isinstance(section, Mapping):
        raise config_error(f"{where} must be a mapping")
    try:
        parsed = model.model_validate(dict(section))
    except ValidationError as exc:
        raise config_error(_message(model, exc.errors(include_url=False)[0], where)) from None
    given = {name: getattr(parsed, name) for name in parsed.model_fields_set}
    return given if model.keeps_null else {k: v for k, v in given.items() if v is not None}


def _message(model: type[_Section], error: Any, where: str) -> str:
    name = str(error["loc"][0]) if error["loc"] else ""
    if error["type"] == "extra_forbidden":
        known = ", ".join(model.model_fields)
        return f"{where}: unknown setting {name!r} (known: {known})"
    if error["type"] == "greater_than_equal":
        return f"{where}.{name} must not be negative, got {error['input']!r}"
    field = model.model_fields.get(name)
    annotation = field.annotation if field is not None else None
    if "list" in str(annotation):
        kind = "a list of strings"  # error["input"] is then the bad item
    else:
        kinds = [k for k in _KINDS if annotation is k or k in getattr(annotation, "__args__", ())]
        kind = " or ".join(_KINDS[k] for k in kinds) or "valid"
    return f"{where}.{name} must be {kind}, got {error['input']!r}"
