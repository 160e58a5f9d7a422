"""`POST /v1/feedback`: what a client says about an answered request, checked and turned into
a `FeedbackRecord` for the decision log's `feedback` table.

Body: `{"request_id": ..., ONE OF "rating": 0..1 | "preferred_model": NAME |
"winner": "strong" | "weak" | "tie"}`. `request_id` is the `x-switchllm-request-id` header
of the chat response. `rating` grades the answer that was served (1 good, 0 bad; thumbs up
= 1, down = 0); `preferred_model` names the model of the served pair that should have
answered; `winner` says the same by role. `switchllm train --from-log` turns them into battles
(see `switchllm.data.feedback_battles`).
"""

from __future__ import annotations

import json
import math
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from switchllm.serving.decision_log import FeedbackRecord

KINDS = ("rating", "preferred_model", "winner")
WINNERS = ("strong", "weak", "tie")
MAX_RECENT = 100_000  # answered requests remembered in memory (older ones: looked up in the log)


class FeedbackError(ValueError):
    """Bad feedback: `status` (400 or 404), message, and the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 code: str = "invalid_feedback") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


@dataclass(frozen=True)
class ServedRequest:
    """What feedback needs to know about a request: who answered, and the served pair."""

    status: int
    model: str | None
    other_model: str | None
    strong_model: str


class RecentRequests:
    """The last `MAX_RECENT` requests by id: the decision log is written in batches, so a
    request answered a moment ago may not be in the file yet."""

    def __init__(self, limit: int = MAX_RECENT) -> None:
        self.limit = limit
        self._items: OrderedDict[str, ServedRequest] = OrderedDict()

    def add(self, request_id: str, request: ServedRequest) -> None:
        self._items[request_id] = request
        if len(self._items) > self.limit:
            self._items.popitem(last=False)

    def get(self, request_id: str) -> ServedRequest | None:
        return self._items.get(request_id)


def parse_feedback_body(body: bytes) -> dict[str, Any]:
    """The checked body: request_id and exactly one kind of feedback."""
    try:
        payload = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError) as exc:
        raise FeedbackError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise FeedbackError(400, "send a JSON object {request_id, rating | preferred_model | "
                                 "winner}")
    request_id = payload.get("request_id")
    if not isinstance(request_id, str) or not request_id.strip():
        raise FeedbackError(400, "'request_id' is required: the x-switchllm-request-id header "
                                 "of the chat response", "request_id", "missing_required")
    given = [k for k in KINDS if payload.get(k) is not None]
    if len(given) != 1:
        raise FeedbackError(400, f"give exactly one of {', '.join(KINDS)} (got "
                                 f"{', '.join(given) or 'none'})", given[1] if given else None)
    unknown = sorted(set(payload) - {"request_id", *KINDS})
    if unknown:
        raise FeedbackError(400, f"unknown field {unknown[0]!r}", unknown[0])
    kind = given[0]
    value = payload[kind]
    if kind == "rating" and not (isinstance(value, int | float) and not isinstance(value, bool)
                                 and math.isfinite(value) and 0 <= value <= 1):
        raise FeedbackError(400, f"'rating' must be a number from 0 (bad) to 1 (good), got "
                                 f"{value!r}", "rating")
    if kind == "preferred_model" and (not isinstance(value, str) or not value.strip()):
        raise FeedbackError(400, "'preferred_model' must be a model name", "preferred_model")
    if kind == "winner" and value not in WINNERS:
        raise FeedbackError(400, f"'winner' must be one of {', '.join(WINNERS)}, got "
                                 f"{value!r}", "winner")
    return {"request_id": request_id.strip(), kind: value}


def feedback_record(checked: dict[str, Any], served: ServedRequest | None) -> FeedbackRecord:
    """The record to store, or FeedbackError when the request is unknown or was not answered."""
    request_id = checked["request_id"]
    if served is None:
        raise FeedbackError(404, f"no request with id {request_id!r} (feedback needs the "
                                 "x-switchllm-request-id of a response of this server)",
                            "request_id", "request_not_found")
    if served.status != 200 or served.model is None:
        raise FeedbackError(400, f"request {request_id!r} was not answered (status "
                                 f"{served.status}): there is no answer to give feedback on",
                            "request_id")
    preferred = checked.get("preferred_model")
    if preferred is not None and preferred not in (served.model, served.other_model):
        pair = ", ".join(m for m in (served.model, served.other_model) if m)
        raise FeedbackError(400, f"'preferred_model' {preferred!r} was not in the served pair "
                                 f"({pair})", "preferred_model")
    if checked.get("winner") is not None and served.other_model is None:
        raise FeedbackError(400, f"request {request_id!r} had no other model to compare with",
                            "winner")
    rating = checked.get("rating")
    return FeedbackRecord(
        ts=time.time(), request_id=request_id,
        rating=None if rating is None else float(rating), preferred_model=preferred,
        winner=checked.get("winner"), model=served.model, other_model=served.other_model,
        strong_model=served.strong_model,
    )
