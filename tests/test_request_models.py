"""The chat request shapes the server checks with pydantic (serving.request_models)."""

from __future__ import annotations

import pytest

from switchllm.serving.request_models import (
    ChatCompletionRequest,
    RequestShapeError,
    check_chat_request,
)

HELLO = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("payload", "param", "says"),
    [
        ({"model": "weak"}, "messages", "'messages' is required"),
        ({"model": "weak", "messages": {"role": "user"}}, "messages", "non-empty list"),
        ({"model": "weak", "messages": []}, "messages", "non-empty list"),
        ({"model": "weak", "messages": [*HELLO, {"content": "no role"}]}, "messages[1]",
         "messages[1] must be an object with a 'role'"),
        ({"model": "weak", "messages": [{"role": 7}]}, "messages[0]", "'role'"),
        ({"messages": HELLO}, "model", "'model' is required"),
        ({"model": "", "messages": HELLO}, "model", "'model' is required"),
        ({"model": ["weak"], "messages": HELLO}, "model", "'model' is required"),
        ({"model": "weak", "messages": HELLO, "stream": "false"}, "stream",
         "'stream' must be true or false"),
    ],
)
def test_a_bad_request_names_its_first_bad_field(payload: dict, param: str, says: str) -> None:
    with pytest.raises(RequestShapeError) as caught:
        check_chat_request(payload)
    assert caught.value.param == param
    assert says in caught.value.message


def test_good_requests_pass_and_are_left_untouched() -> None:
    payload = {"model": "router-mf-s0.3", "stream": None, "temperature": 0.2, "user": "u",
               "messages": [{"role": "system", "content": "be brief"},
                            {"role": "user", "content": [{"type": "text", "text": "hi"}]},
                            {"role": "assistant", "tool_calls": [{"id": "1"}]}]}
    before = repr(payload)
    check_chat_request(payload)
    assert repr(payload) == before


def test_the_schema_says_what_is_required() -> None:
    schema = ChatCompletionRequest.model_json_schema()
    assert set(schema["required"]) == {"messages", "model"}
    assert schema["properties"]["messages"]["minItems"] == 1
