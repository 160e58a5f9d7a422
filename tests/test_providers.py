"""litellm-style upstream resolution shared by `switchllm serve` and `Controller`."""

from __future__ import annotations

import pytest

from switchllm.controller import Controller
from switchllm.serving import ConfigError, build_config
from switchllm.serving.providers import PROVIDERS, resolve_model

ENV = ("OPENAI_BASE_URL", "OPENAI_API_KEY", "OLLAMA_API_BASE", "GROQ_API_BASE",
       "FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY")


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("name", "base_url", "key_env", "sent"),
    [
        ("gpt-4o", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o"),
        ("openai/gpt-4o", "https://api.openai.com/v1", "OPENAI_API_KEY", "gpt-4o"),
        ("anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1", "https://api.endpoints.anyscale.com/v1",
         "ANYSCALE_API_KEY", "mistralai/Mixtral-8x7B-Instruct-v0.1"),
        ("together_ai/meta-llama/Llama-3-8b-chat-hf", "https://api.together.xyz/v1",
         "TOGETHERAI_API_KEY", "meta-llama/Llama-3-8b-chat-hf"),
        ("groq/llama3-8b-8192", "https://api.groq.com/openai/v1", "GROQ_API_KEY",
         "llama3-8b-8192"),
        ("ollama/llama3", "http://localhost:11434/v1", None, "llama3"),
        ("ollama_chat/llama3", "http://localhost:11434/v1", None, "llama3"),
        ("mistral/mistral-small-latest", "https://api.mistral.ai/v1", "MISTRAL_API_KEY",
         "mistral-small-latest"),
        ("fireworks_ai/accounts/fireworks/models/llama-v3-8b-instruct",
         "https://api.fireworks.ai/inference/v1", "FIREWORKS_AI_API_KEY",
         "accounts/fireworks/models/llama-v3-8b-instruct"),
        ("deepinfra/meta-llama/Meta-Llama-3-8B-Instruct", "https://api.deepinfra.com/v1/openai",
         "DEEPINFRA_API_KEY", "meta-llama/Meta-Llama-3-8B-Instruct"),
        ("perplexity/llama-3-sonar-small-32k-chat", "https://api.perplexity.ai",
         "PERPLEXITYAI_API_KEY", "llama-3-sonar-small-32k-chat"),
        ("anthropic/claude-3-5-sonnet-20240620", "https://api.anthropic.com/v1",
         "ANTHROPIC_API_KEY", "claude-3-5-sonnet-20240620"),
        ("gemini/gemini-1.5-flash", "https://generativelanguage.googleapis.com/v1beta/openai",
         "GEMINI_API_KEY", "gemini-1.5-flash"),
    ],
)
def test_prefix_table(name: str, base_url: str, key_env: str | None, sent: str) -> None:
    spec = resolve_model(name)
    assert (spec.base_url, spec.api_key_env, spec.sent_name) == (base_url, key_env, sent)
    assert spec.name == name  # clients keep asking for, and see, the name they wrote


def test_environment_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", "http://127.0.0.1:9/v1")
    monkeypatch.setenv("OLLAMA_API_BASE", "http://gpu-box:11434")
    monkeypatch.setenv("GROQ_API_BASE", "http://proxy/groq")
    monkeypatch.setenv("FIREWORKS_API_KEY", "x")  # litellm's other name for the key
    assert resolve_model("gpt-4o").base_url == "http://127.0.0.1:9/v1"
    assert resolve_model("openai/my-model").base_url == "http://127.0.0.1:9/v1"
    assert resolve_model("ollama_chat/llama3").base_url == "http://gpu-box:11434/v1"
    assert resolve_model("groq/llama3-8b-8192").base_url == "http://proxy/groq"
    assert resolve_model("fireworks_ai/m").api_key_env == "FIREWORKS_API_KEY"


def test_explicit_base_url_strips_known_prefixes_and_keeps_other_names() -> None:
    spec = resolve_model("openai/my-model", base_url="http://vllm:8000/v1")
    assert (spec.base_url, spec.sent_name) == ("http://vllm:8000/v1", "my-model")
    spec = resolve_model("meta-llama/Meta-Llama-3-8B-Instruct", base_url="http://vllm:8000/v1")
    assert spec.sent_name == "meta-llama/Meta-Llama-3-8B-Instruct"
    assert spec.api_key_env == "OPENAI_API_KEY"  # as litellm: the OpenAI key goes along


def test_unknown_prefix_is_a_start_up_error() -> None:
    with pytest.raises(ConfigError, match=r"unknown provider prefix 'bogus/'.*groq/"):
        resolve_model("bogus/model")
    with pytest.raises(ConfigError, match="unknown provider prefix 'bogus/'"):
        build_config(routers=["random"], strong_model="gpt-4o", weak_model="bogus/model")
    with pytest.raises(ConfigError, match="unknown provider prefix 'bogus/'"):
        Controller(routers=["random"], strong_model="gpt-4o", weak_model="bogus/model")


def test_server_and_controller_resolve_alike(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    config = build_config(routers=["random"], strong_model="openai/my-model",
                          weak_model="groq/llama3-8b-8192", base_url="http://vllm:8000/v1")
    client = Controller(routers=["random"], strong_model="openai/my-model",
                        weak_model="groq/llama3-8b-8192", api_base="http://vllm:8000/v1")
    for name in ("openai/my-model", "groq/llama3-8b-8192"):
        assert config.models[name] == client._specs[name]
    # --base-url without --api-key: $OPENAI_API_KEY is sent, as litellm does
    assert config.models["openai/my-model"].resolve_key() == "sk-env"
    assert set(PROVIDERS) >= {"openai", "anyscale", "together_ai", "groq", "ollama",
                              "ollama_chat", "mistral", "fireworks_ai", "deepinfra",
                              "perplexity", "anthropic", "gemini"}


def test_routellm_default_pair_when_none_given() -> None:
    config = build_config(routers=["random"])
    assert config.strong_model == "gpt-4-1106-preview"
    assert config.weak_model == "anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1"
    assert config.models[config.weak_model].sent_name == "mistralai/Mixtral-8x7B-Instruct-v0.1"


def test_start_up_states_the_scored_pair(caplog: pytest.LogCaptureFixture) -> None:
    import logging

    from switchllm.serving.pairs import state_pairs
    from tests.serving_fixtures import KeywordRouter

    router = KeywordRouter()
    router.models = ["gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1", "llama-3"]
    with caplog.at_level(logging.INFO, logger="switchllm.serving"):
        # RouteLLM's default served names match the card's after the provider prefix goes
        (line,) = state_pairs({"kw": router}, "gpt-4-1106-preview",
                              "anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1")
        assert line == ("router kw scores the served pair "
                        "(gpt-4-1106-preview vs mistralai/Mixtral-8x7B-Instruct-v0.1)")
        (line,) = state_pairs({"kw": router}, "GPT-4-1106-preview", "groq/llama3-8b-8192")
    assert line.startswith("warning: router kw does not know 'groq/llama3-8b-8192': it "
                           "scores its training pair")
    assert [r.levelname for r in caplog.records] == ["INFO", "WARNING"]
