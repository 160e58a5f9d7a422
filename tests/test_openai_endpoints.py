"""/v1/embeddings, /v1/completions, /v1/responses and GET /v1/models/{id}, driven by the
official openai client against the server and a loopback upstream; 4xx outcomes counted."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from switchllm.serving import create_app, read_records
from switchllm.serving.config import build_config
from tests.serving_fixtures import FakeUpstream, ServerThread

REPLY = "Hello from the upstream"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def log_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("log") / "decisions.sqlite"


@pytest.fixture(scope="module")
def server(upstream: FakeUpstream, log_path: Path) -> Iterator[ServerThread]:
    config = build_config(routers=["random"], strong_model="strong",
                          weak_model="openai/weak-8b", base_url=upstream.base_url,
                          overrides={"log_path": str(log_path)})
    thread = ServerThread(create_app(config)).start()
    yield thread
    thread.stop()


@pytest.fixture(autouse=True)
def _reset(upstream: FakeUpstream) -> None:
    upstream.reset()


@pytest.fixture
def client(server: ServerThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="x", max_retries=0)


def test_embeddings_pass_through(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = client.embeddings.create(model="openai/weak-8b", input=["a", "bbb"])
    assert [d.embedding[0] for d in result.data] == [1.0, 3.0]
    assert result.model == "openai/weak-8b"
    (seen,) = upstream.seen
    assert (seen.path, seen.model) == ("/v1/embeddings", "weak-8b")
    with pytest.raises(openai.BadRequestError, match="not routed"):
        client.embeddings.create(model="router-random-0.5", input="a")
    with pytest.raises(openai.NotFoundError, match="not served here"):
        client.embeddings.create(model="text-embedding-3-small", input="a")


def test_completions_route_and_stream(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    result = client.completions.create(model="router-random-0", prompt="Say hi")
    assert (result.model, result.choices[0].text) == ("strong", REPLY)
    assert upstream.seen[0].path == "/v1/completions"
    chunks = list(client.completions.create(model="router-random-1", prompt="Say hi",
                                            stream=True))
    assert "".join(c.choices[0].text for c in chunks) == REPLY
    assert {c.model for c in chunks} == {"openai/weak-8b"}
    direct = client.completions.create(model="strong", prompt="x")
    assert direct.model == "strong"


def test_responses_route_like_chat(client: openai.OpenAI, upstream: FakeUpstream) -> None:
    text = client.responses.create(model="router-random-0", input="Prove it.")
    assert (text.model, text.output_text) == ("strong", REPLY)
    items = client.responses.create(model="router-random-1", input=[
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "input_text", "text": "hello"}]},
    ])
    assert items.model == "openai/weak-8b" and items.output_text == REPLY
    assert [s.path for s in upstream.seen] == ["/v1/responses"] * 2
    assert upstream.seen[1].model == "weak-8b"
    assert upstream.seen[1].body["input"][0]["content"] == "Be brief."  # passed on untouched


def test_responses_stream(client: openai.OpenAI) -> None:
    events = list(client.responses.create(model="router-random-1", input="hi", stream=True))
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == REPLY
    assert events[-1].response.model == "openai/weak-8b"
    with client.responses.stream(model="router-random-0", input="hi") as stream:
        final = stream.get_final_response()
    assert (final.model, final.output_text) == ("strong", REPLY)


def test_retrieve_models(client: openai.OpenAI) -> None:
    assert client.models.retrieve("router-random-s0.5").owned_by == "switchllm"
    assert client.models.retrieve("router-random-0.3").id == "router-random-0.3"
    assert client.models.retrieve("strong").owned_by == "upstream"
    for missing in ("nope", "router-nope-0.5", "router-random-2"):
        with pytest.raises(openai.NotFoundError):
            client.models.retrieve(missing)


def test_rejected_requests_are_counted(server: ServerThread, log_path: Path) -> None:
    bad = httpx.post(server.url + "/v1/chat/completions", json={"model": "router-random-0.5"})
    assert bad.status_code == 400
    unknown = httpx.post(server.url + "/v1/responses", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404
    metrics = httpx.get(server.url + "/metrics").text
    assert 'switchllm_requests_total{model="none",router="(rejected)",status="400"}' in metrics
    assert 'switchllm_requests_total{model="none",router="(rejected)",status="404"}' in metrics
    deadline = time.time() + 5
    statuses: list[int] = []
    while time.time() < deadline:
        statuses = [r["status"] for r in read_records(log_path) if r["router"] == "(rejected)"]
        if {400, 404} <= set(statuses):
            break
        time.sleep(0.05)
    assert {400, 404} <= set(statuses)
