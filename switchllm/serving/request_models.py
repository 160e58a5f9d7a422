"""The request shapes the server checks, as pydantic models: the server validates each chat
request with them (errors become OpenAI-style 400s naming the field), and their JSON schemas
can describe the API (`ChatCompletionRequest.model_json_schema()`).

Only what the router and the fallback need is checked; every other field is forwarded to the
upstream untouched, so the models ignore extra fields (they validate the parsed body, which the
server keeps and forwards, instead of rebuilding it).

Measured on the hot path (issue 7's rule: a well-kept part is taken when it costs at most
0.3 ms p50 at concurrency 1 and 10% req/s at 64 clients): parsing and checking a chat request
took 13.8 us with the hand-written checks and 15.9 us with these models (timeit, in-process,
contended 2-core machine), against roughly 300-400 us of server CPU per proxied request;
`bench/server.py --parts` shows the end-to-end numbers (docs/SERVING.md, Performance).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr, ValidationError

__all__ = ["ChatCompletionRequest", "ChatMessage", "RequestShapeError", "check_chat_request"]


class ChatMessage(BaseModel):
    """One message; only `role` is required (content may be a string, parts, or absent for
    tool calls)."""

    model_config = ConfigDict(extra="ignore")
    role: StrictStr
    content: Any = None


class ChatCompletionRequest(BaseModel):
    """POST /v1/chat/completions. `model` is `router-<router>-<threshold>`,
    `router-<router>-s<share>`, a route group, or an upstream model name."""

    model_config = ConfigDict(extra="ignore")
    # declared in the order the errors are reported
    messages: list[ChatMessage] = Field(min_length=1)
    model: StrictStr = Field(min_length=1)
    stream: StrictBool | None = None


class RequestShapeError(ValueError):
    """A request that does not have the shape its endpoint needs. `param` names the field
    (OpenAI's `error.param`), `code` is OpenAI's `error.code` or None."""

    def __init__(self, message: str, param: str, code: str | None = None) -> None:
        super().__init__(message)
        self.message, self.param, self.code = message, param, code


def check_chat_request(payload: dict[str, Any]) -> None:
    """Raise RequestShapeError, naming the first bad field, unless `payload` (a parsed JSON
    object) is a chat completion request the server can route and forward."""
    try:
        ChatCompletionRequest.model_validate(payload)
    except ValidationError as exc:
        raise _shape_error(exc.errors(include_url=False)[0]) from None


def _shape_error(error: Any) -> RequestShapeError:
    loc = error["loc"]
    missing = error["type"] == "missing" and len(loc) == 1
    if loc[0] == "messages":
        if missing:
            return RequestShapeError("'messages' is required", "messages", "missing_required")
        if len(loc) == 1:
            return RequestShapeError("'messages' must be a non-empty list of messages",
                                     "messages")
        where = f"messages[{loc[1]}]"
        return RequestShapeError(f"{where} must be an object with a 'role'", where)
    if loc[0] == "model":
        return RequestShapeError(
            "'model' is required: router-<router>-<threshold> or an upstream model name",
            "model", "missing_required")
    if loc[0] == "stream":
        return RequestShapeError("'stream' must be true or false", "stream")
    where = ".".join(str(part) for part in loc)  # pragma: no cover - every field is above
    return RequestShapeError(f"{where}: {error['msg']}", where)
