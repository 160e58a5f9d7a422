"""Upstream keys never reach a client, whole or as the masked fragment providers echo back."""

from __future__ import annotations

import json

import pytest

from switchllm.serving.config import ModelSpec
from switchllm.serving.upstream import Upstreams

KEY = "sk-proj-abcdEFGH1234ijklMNOP5678wxyz"


@pytest.fixture
def upstreams(monkeypatch: pytest.MonkeyPatch) -> Upstreams:
    monkeypatch.setenv("TEST_UPSTREAM_KEY", KEY)
    spec = ModelSpec(name="m", base_url="http://127.0.0.1:9/v1", api_key_env="TEST_UPSTREAM_KEY")
    return Upstreams({"m": spec})


@pytest.mark.parametrize("echoed", [
    "sk-proj-abcd************wxyz",  # OpenAI's "Incorrect API key provided" form
    "sk-proj-...5678wxyz",
    KEY,
    "EFGH1234ijklMNOP",  # a long run from the middle
])
def test_an_upstream_400_that_echoes_the_key_is_redacted(upstreams: Upstreams, echoed: str) -> None:
    raw = json.dumps({"error": {"message": f"Incorrect API key provided: {echoed}. See docs.",
                                "type": "invalid_request_error"}}).encode()
    error = upstreams._status_error("m", 400, raw, {})
    shown = str(error) + json.dumps(error.body)
    for fragment in ("abcd", "wxyz", "EFGH1234", "5678"):
        assert fragment not in shown
    assert "[redacted]" in shown and "Incorrect API key provided" in shown


def test_ordinary_error_text_is_kept(upstreams: Upstreams) -> None:
    text = "Invalid value for 'temperature': 3.5 is greater than the maximum of 2 (gpt-4o-mini)"
    assert upstreams.redact(text) == text
