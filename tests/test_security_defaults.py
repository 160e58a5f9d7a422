"""Security defaults (issue 7, item 3): an unauthenticated /health says only that the server is
up, and upstream keys come from an environment variable or a file, never the config itself."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from switchllm.serving import ConfigError, build_config, create_app
from tests.serving_fixtures import FakeUpstream, ServerThread


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    fake = FakeUpstream().start()
    yield fake
    fake.stop()


def serve(upstream: FakeUpstream, **overrides: object) -> ServerThread:
    config = build_config(routers={"random": "random"}, strong_model="strong-secret-name",
                          weak_model="weak", base_url=upstream.base_url,
                          overrides={"log_path": None, **overrides})
    return ServerThread(create_app(config)).start()


def test_open_server_health_names_nothing(upstream: FakeUpstream) -> None:
    thread = serve(upstream)
    try:
        response = httpx.get(thread.url + "/health")
        assert response.status_code == 200
        assert response.json() == {"status": "online"}
    finally:
        thread.stop()


def test_health_details_only_with_a_client_key(upstream: FakeUpstream) -> None:
    thread = serve(upstream, api_keys=["client-key"])
    try:
        anonymous = httpx.get(thread.url + "/health")
        assert anonymous.status_code == 200  # health checks send no key
        assert anonymous.json() == {"status": "online"}
        wrong = httpx.get(thread.url + "/health", headers={"authorization": "Bearer nope"})
        assert wrong.json() == {"status": "online"}
        keyed = httpx.get(thread.url + "/health",
                          headers={"authorization": "Bearer client-key"}).json()
        assert keyed["status"] == "online"
        assert keyed["strong_model"] == "strong-secret-name" and keyed["routers"] == ["random"]
    finally:
        thread.stop()


def write_config(tmp_path: Path, model_settings: str) -> Path:
    path = tmp_path / "serve.yaml"
    path.write_text("strong_model: s\nweak_model: w\nmodels:\n  s:\n"
                    + "".join(f"    {line}\n" for line in model_settings.splitlines())
                    + "  w: {base_url: 'http://127.0.0.1:9/v1'}\n")
    return path


@pytest.mark.parametrize(("settings", "says"), [
    ("api_key: sk-live-123456", "keys never belong in config files"),
    ("api_key_env: sk-live-123456", "must be the NAME of an environment variable"),
    ("base_url: 'https://user:sk-live-123456@api.example.com/v1'", "carries a password"),
    ("api_key_env: K\napi_key_file: /tmp/k", "not both"),
])
def test_literal_key_in_the_config_is_refused_without_repeating_it(
    tmp_path: Path, settings: str, says: str
) -> None:
    with pytest.raises(ConfigError, match=says) as caught:
        build_config(config_path=write_config(tmp_path, settings), routers=["random"])
    assert "sk-live-123456" not in str(caught.value)


def test_key_file_is_read_and_sent(tmp_path: Path, upstream: FakeUpstream) -> None:
    key_file = tmp_path / "key"
    key_file.write_text("sk-from-file-0001\n")
    os.chmod(key_file, 0o600)
    path = write_config(tmp_path, f"base_url: '{upstream.base_url}'\napi_key_file: '{key_file}'")
    config = build_config(config_path=path, routers=["random"], overrides={"log_path": None})
    assert config.models["s"].resolve_key() == "sk-from-file-0001"
    assert "sk-from-file-0001" not in repr(config.models["s"])
    upstream.reset()
    thread = ServerThread(create_app(config)).start()
    try:
        response = httpx.post(thread.url + "/v1/chat/completions", json={
            "model": "s", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
        assert upstream.seen[-1].headers["authorization"] == "Bearer sk-from-file-0001"
    finally:
        thread.stop()


def test_key_file_problems_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        build_config(config_path=write_config(tmp_path, "api_key_file: /nonexistent/key"),
                     routers=["random"])
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(ConfigError, match="is empty"):
        build_config(config_path=write_config(tmp_path, f"api_key_file: '{empty}'"),
                     routers=["random"])
    shared = tmp_path / "shared"
    shared.write_text("sk-x\n")
    os.chmod(shared, 0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        build_config(config_path=write_config(tmp_path, f"api_key_file: '{shared}'"),
                     routers=["random"])


def test_api_key_file_flag(tmp_path: Path) -> None:
    import argparse

    from switchllm.commands import serve as serve_command
    from switchllm.errors import SwitchLLMError

    key_file = tmp_path / "key"
    key_file.write_text("sk-flag-file-0002")
    os.chmod(key_file, 0o600)
    parser = argparse.ArgumentParser()
    serve_command.add_arguments(parser)
    args = parser.parse_args(["--routers", "random", "--strong-model", "s", "--weak-model", "w",
                              "--base-url", "http://127.0.0.1:9/v1",
                              "--api-key-file", str(key_file)])
    config = serve_command.config_from_args(args)
    assert config.models["s"].resolve_key() == "sk-flag-file-0002"
    args.api_key = "sk-other"
    with pytest.raises(SwitchLLMError, match="not both"):
        serve_command.config_from_args(args)
