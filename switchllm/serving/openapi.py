"""The server's API as an OpenAPI 3.1 document, served at `GET /openapi.json`.

Hand-kept beside the server's route list (its handlers are ASGI-level, with no typed signature
to generate it from); tests/test_openapi.py checks that every route the server answers is
described here, and fuzzes
the server with requests shaped after it. Request bodies are forwarded to OpenAI-compatible
upstreams, so only the fields the server itself reads are described; other fields pass through.
"""

from __future__ import annotations

from typing import Any

from switchllm import __version__
from switchllm.serving.dashboard import ASSETS as DASHBOARD_ASSETS


def _error(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


ERRORS = {
    "400": _error("malformed request: the message names the field"),
    "401": _error("missing or invalid client key (when keys are required)"),
    "403": _error("Host header not allowed (DNS rebinding defence)"),
    "404": _error("unknown model or endpoint"),
    "405": _error("wrong method for this path"),
    "408": _error("request head or body did not arrive in time"),
    "413": _error("request body over the server's limit"),
    "415": _error("request body is not application/json"),
    "429": _error("every upstream is rate limited (Retry-After is set)"),
    "502": _error("every upstream failed"),
    "503": _error("the server is at its connection limit (Retry-After is set)"),
    "504": _error("every upstream timed out"),
}
GET_ERRORS = {k: ERRORS[k] for k in ("401", "403", "405", "408", "503")}
KEYED = [{"bearer": []}, {}]  # a key is needed only when the server is started with keys


def _json_body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _post(summary: str, request: str, response: str, *, streams: bool) -> dict[str, Any]:
    ok: dict[str, Any] = {"application/json": {
        "schema": {"$ref": f"#/components/schemas/{response}"}}}
    if streams:
        ok["text/event-stream"] = {"schema": {"type": "string",
                                              "description": "server-sent events, ending with "
                                                             "`data: [DONE]`"}}
    return {"post": {"summary": summary, "security": KEYED, "requestBody": _json_body(request),
                     "responses": {"200": {"description": "the upstream's answer, with "
                                           "x-switchllm-* headers", "content": ok}, **ERRORS}}}


def _get(summary: str, schema: dict[str, Any], *, keyed: bool = True,
         content_type: str = "application/json") -> dict[str, Any]:
    operation: dict[str, Any] = {
        "summary": summary,
        "responses": {"200": {"description": "OK", "content": {content_type: {"schema": schema}}},
                      **GET_ERRORS}}
    if keyed:
        operation["security"] = KEYED
    return {"get": operation}


MODEL_PARAMETER = {"name": "model", "in": "path", "required": True, "schema": {"type": "string"},
                   "description": "an upstream model, a route group or router-<name>-<threshold>"}

_CHAT = _post("Chat completion, routed (model router-<router>-<threshold>, a route group, or an "
              "upstream model)", "ChatCompletionRequest", "ChatCompletion", streams=True)
_COMPLETIONS = _post("Legacy completion, routed on `prompt`", "CompletionRequest", "Object",
                     streams=True)
_RESPONSES = _post("Responses API, routed on `input`", "ResponsesRequest", "Object",
                   streams=True)
_EMBEDDINGS = _post("Embeddings, passed through to a configured model", "EmbeddingsRequest",
                    "Object", streams=False)
_MODELS = _get("Routers, route groups and upstream models",
               {"$ref": "#/components/schemas/ModelList"})
_MODEL = {"parameters": [MODEL_PARAMETER],
          **_get("One model or router name", {"$ref": "#/components/schemas/Model"})}
_MODEL["get"]["responses"]["404"] = ERRORS["404"]

PATHS: dict[str, Any] = {}
for _prefix in ("/v1", ""):  # the OpenAI SDK's base URL may or may not end in /v1
    PATHS[f"{_prefix}/chat/completions"] = _CHAT
    PATHS[f"{_prefix}/completions"] = _COMPLETIONS
    PATHS[f"{_prefix}/responses"] = _RESPONSES
    PATHS[f"{_prefix}/embeddings"] = _EMBEDDINGS
    PATHS[f"{_prefix}/models"] = _MODELS
    PATHS[f"{_prefix}/models/{{model}}"] = _MODEL
PATHS["/v1/feedback"] = _post("Rate or compare an answered request (by x-switchllm-request-id)",
                              "Feedback", "FeedbackStored", streams=False)
PATHS["/health"] = _get("Liveness: {\"status\": \"online\"} (routers and pair too for a client "
                        "with a valid key, where keys are required)",
                        {"$ref": "#/components/schemas/Health"}, keyed=False)
PATHS["/metrics"] = _get("Prometheus metrics", {"type": "string"},
                         content_type="text/plain")
PATHS["/openapi.json"] = _get("This document", {"type": "object"}, keyed=False)

PATHS["/v1/stats"] = _get("Aggregates of the decision log for a time window (the "
                          "dashboard's data)", {"type": "object"})
for _path, (_, _content_type) in DASHBOARD_ASSETS.items():
    PATHS[_path] = _get("The dashboard page and its static files (no data: the page fetches "
                        "/v1/stats with the client key)", {"type": "string"},
                        keyed=False, content_type=_content_type.decode().split(";")[0])

_TEXT_PARTS = {"type": "array", "items": {"type": "object", "properties": {
    "type": {"type": "string"}, "text": {"type": "string"}}}}
SCHEMAS: dict[str, Any] = {
    "Error": {"type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type"], "properties": {
            "message": {"type": "string"}, "type": {"type": "string"},
            "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}},
    "Message": {"type": "object", "required": ["role"], "properties": {
        "role": {"type": "string"},
        "content": {"oneOf": [{"type": "string"}, _TEXT_PARTS, {"type": "null"}]}},
        "additionalProperties": True},
    "ChatCompletionRequest": {
        "type": "object", "required": ["model", "messages"], "additionalProperties": True,
        "description": "OpenAI's chat request; fields other than `model` are forwarded "
                       "unchanged. Strings must be valid Unicode (no lone surrogates), numbers "
                       "finite, nesting at most 64 levels.",
        "properties": {
            "model": {"type": "string", "minLength": 1},
            "messages": {"type": "array", "minItems": 1,
                         "items": {"$ref": "#/components/schemas/Message"}},
            "stream": {"type": ["boolean", "null"]}}},
    "CompletionRequest": {"type": "object", "required": ["model", "prompt"],
                          "additionalProperties": True, "properties": {
                              "model": {"type": "string", "minLength": 1},
                              "prompt": {"oneOf": [{"type": "string"}, {
                                  "type": "array", "items": {"type": "string"}}]},
                              "stream": {"type": ["boolean", "null"]}}},
    "ResponsesRequest": {"type": "object", "required": ["model", "input"],
                         "additionalProperties": True, "properties": {
                             "model": {"type": "string", "minLength": 1},
                             "input": {"oneOf": [{"type": "string"}, {
                                 "type": "array", "items": {"type": "object"}}]},
                             "stream": {"type": ["boolean", "null"]}}},
    "EmbeddingsRequest": {"type": "object", "required": ["model", "input"],
                          "additionalProperties": True, "properties": {
                              "model": {"type": "string", "minLength": 1},
                              "input": {"oneOf": [{"type": "string"}, {
                                  "type": "array", "items": {"type": "string"}}]}}},
    "Feedback": {"type": "object", "required": ["request_id"], "properties": {
        "request_id": {"type": "string"},
        "rating": {"type": "number", "minimum": 0, "maximum": 1},
        "preferred_model": {"type": "string"},
        "winner": {"enum": ["strong", "weak", "tie"]}},
        "description": "exactly one of rating, preferred_model, winner"},
    "FeedbackStored": {"type": "object", "properties": {
        "object": {"const": "feedback"}, "request_id": {"type": "string"},
        "stored": {"type": "boolean"}}},
    "ChatCompletion": {"type": "object", "additionalProperties": True, "properties": {
        "id": {"type": "string"}, "object": {"type": "string"},
        "model": {"type": "string", "description": "the model that answered"},
        "choices": {"type": "array"}, "usage": {"type": "object"}}},
    "Object": {"type": "object", "additionalProperties": True},
    "Model": {"type": "object", "properties": {
        "id": {"type": "string"}, "object": {"const": "model"}, "created": {"type": "integer"},
        "owned_by": {"type": "string"}, "description": {"type": "string"}}},
    "ModelList": {"type": "object", "properties": {
        "object": {"const": "list"},
        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}}},
    "Health": {"type": "object", "required": ["status"], "properties": {
        "status": {"const": "online"}, "routers": {"type": "array", "items": {"type": "string"}},
        "strong_model": {"type": "string"}, "weak_model": {"type": "string"}}},
}

OPENAPI: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {"title": "switchllm routing server", "version": __version__,
             "description": "An OpenAI-compatible server that routes each request to a strong "
                            "or a weak model (docs/SERVING.md)."},
    "paths": PATHS,
    "components": {"schemas": SCHEMAS, "securitySchemes": {
        "bearer": {"type": "http", "scheme": "bearer",
                   "description": "a client key from --api-keys / $SWITCHLLM_API_KEYS"}}},
}
