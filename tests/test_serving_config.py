"""Serving configuration: model names, prompts, YAML and flags."""

from __future__ import annotations

from pathlib import Path

import pytest

from switchllm.commands import serve
from switchllm.serving.config import (
    ConfigError,
    ModelNameError,
    RouteRequest,
    build_config,
    client_api_keys,
    parse_router_model,
    prompt_text,
)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("router-mf-0.11593", RouteRequest("mf", threshold=0.11593)),
        ("router-sw_ranking-0.2", RouteRequest("sw_ranking", threshold=0.2)),
        ("router-causal_llm-s0.3", RouteRequest("causal_llm", strong_share=0.3)),
        ("router-my-card-1", RouteRequest("my-card", threshold=1.0)),
        ("router-mf-S0", RouteRequest("mf", strong_share=0.0)),
        ("gpt-4o", None),
    ],
)
def test_router_model_names(name: str, expected: RouteRequest | None) -> None:
    assert parse_router_model(name) == expected


@pytest.mark.parametrize("name", ["router-mf", "router--0.5", "router-mf-nan", "router-mf-1.01",
                                  "router-mf-s", "router-mf-"])
def test_bad_router_model_names(name: str) -> None:
    with pytest.raises(ModelNameError):
        parse_router_model(name)


def test_prompt_text_uses_last_user_message_text_parts() -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "user", "content": [{"type": "text", "text": "look at"},
                                     {"type": "image_url", "image_url": {"url": "x"}},
                                     {"type": "text", "text": "this"}]},
        {"role": "assistant", "content": "ok"},
    ]
    assert prompt_text(messages) == "look at\nthis"
    assert prompt_text([{"role": "system", "content": "only system"}]) == "only system"


def test_yaml_config_and_flags(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text(
        "routers: [random]\nstrong_model: big\nweak_model: small\n"
        "models:\n  big: {base_url: 'https://a.example/v1', api_key_env: A_KEY, "
        "input_price: 2.5, output_price: 10}\n"
        "  small: {base_url: 'http://127.0.0.1:8000/v1', upstream_model: org/small-7b}\n"
        "server: {port: 7000, retries: 3}\nlog: {path: /tmp/x.sqlite, prompts: true}\n"
    )
    monkeypatch.setenv("A_KEY", "secret")
    config = build_config(config_path=path, overrides={"port": 7001})
    assert config.port == 7001 and config.retries == 3 and config.log_prompts
    assert config.models["big"].resolve_key() == "secret"
    assert config.models["big"].cost(1_000_000, 1_000_000) == pytest.approx(12.5)
    assert config.models["small"].sent_name == "org/small-7b"
    assert "secret" not in repr(config)


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("routers: [random]\nstrong_model: a\nweak_model: b\nmodels: {a: {api_key: sk-1}}\n",
         "api_key_env"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nmodels: {a: {colour: red}}\n",
         "unknown setting 'colour'"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nserver: {port: abc}\n",
         "server.port must be an integer, got 'abc'"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nserver: {port: true}\n",
         "server.port must be an integer, got True"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nserver: {colour: red}\n",
         "server: unknown setting 'colour'"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nserver: {allowed_hosts: [a, 5]}\n",
         "server.allowed_hosts must be a list of strings, got 5"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nmodels: {a: {input_price: -1}}\n",
         "models.a.input_price must not be negative"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nmodels: {a: {base_url: 5}}\n",
         "models.a.base_url must be a string, got 5"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nlog: {flush_ms: soon}\n",
         "log.flush_ms must be a number, got 'soon'"),
        ("routers: [random]\nstrong_model: a\nweak_model: b\nserver: [1]\n",
         "server must be a mapping"),
        ("routers: [random]\nstrong_model: a\nweak_model: a\n", "the same"),
        ("routers: [random]\nstrong_model: a\nweak_model: foo/b\n", "unknown provider prefix"),
        ("[1, 2", "not valid YAML"),
    ],
)
def test_config_errors_name_the_problem(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        build_config(config_path=path)


def test_serve_flags_routellm_compatible(monkeypatch: pytest.MonkeyPatch) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    serve.add_arguments(parser)
    args = parser.parse_args(["--routers", "random", "--strong-model", "gpt-4o",
                              "--weak-model", "gpt-4o-mini", "--base-url", "http://h:1/v1",
                              "--api-key", "k", "--no-log"])
    monkeypatch.setenv("SWITCHLLM_API_KEYS", "c1, c2")
    config = serve.config_from_args(args)
    assert config.port == 6060 and config.host == "127.0.0.1" and config.log_path is None
    assert config.models["gpt-4o"].base_url == "http://h:1/v1"
    assert config.models["gpt-4o-mini"].resolve_key() == "k"
    assert config.api_keys == ["c1", "c2"]
    assert client_api_keys("x") == ["x"]
    args = parser.parse_args(["--routers", "mine=/cards/mf", "random", "--strong-model", "a",
                              "--weak-model", "b"])
    assert serve.config_from_args(args).routers == {"mine": "/cards/mf", "random": "random"}


@pytest.mark.parametrize("step", [1, 3, 1000])
def test_chunk_decoder_any_split(step: int) -> None:
    from switchllm.serving.http_pool import _ChunkDecoder

    body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n"
    decoder = _ChunkDecoder()
    out = b"".join(decoder.feed(body[i : i + step]) for i in range(0, len(body), step))
    assert out == b"hello world" and decoder.finished and not decoder.leftover
