"""Upstream resolution like litellm's, for model names RouteLLM users write: a provider prefix
(`groq/llama3-8b-8192`, `anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1`, `ollama_chat/llama3`)
picks the provider's OpenAI-compatible endpoint and API-key variable, and is stripped from the
name sent upstream. Plain names go to OpenAI (`$OPENAI_BASE_URL`, `$OPENAI_API_KEY`).

Used by `switchllm serve` (via serving.config) and by `Controller` alike, for every model the
YAML `models:` section does not describe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from switchllm.serving.config import ConfigError, ModelSpec

OPENAI_BASE_URL = "https://api.openai.com/v1"


@dataclass(frozen=True)
class Provider:
    base_url: str
    key_envs: tuple[str, ...]  # the first one set is used; none: the endpoint takes no key
    base_env: str | None = None  # overrides base_url when set (litellm's <PROVIDER>_API_BASE)


PROVIDERS: dict[str, Provider] = {
    "openai": Provider(OPENAI_BASE_URL, ("OPENAI_API_KEY",), "OPENAI_BASE_URL"),
    "anyscale": Provider("https://api.endpoints.anyscale.com/v1", ("ANYSCALE_API_KEY",),
                         "ANYSCALE_API_BASE"),
    "together_ai": Provider("https://api.together.xyz/v1",
                            ("TOGETHERAI_API_KEY", "TOGETHER_API_KEY"), "TOGETHERAI_API_BASE"),
    "groq": Provider("https://api.groq.com/openai/v1", ("GROQ_API_KEY",), "GROQ_API_BASE"),
    "ollama": Provider("http://localhost:11434/v1", (), "OLLAMA_API_BASE"),
    "ollama_chat": Provider("http://localhost:11434/v1", (), "OLLAMA_API_BASE"),
    "mistral": Provider("https://api.mistral.ai/v1", ("MISTRAL_API_KEY",), "MISTRAL_API_BASE"),
    "fireworks_ai": Provider("https://api.fireworks.ai/inference/v1",
                             ("FIREWORKS_AI_API_KEY", "FIREWORKS_API_KEY"),
                             "FIREWORKS_AI_API_BASE"),
    "deepinfra": Provider("https://api.deepinfra.com/v1/openai", ("DEEPINFRA_API_KEY",),
                          "DEEPINFRA_API_BASE"),
    "perplexity": Provider("https://api.perplexity.ai", ("PERPLEXITYAI_API_KEY",
                                                         "PERPLEXITY_API_KEY"),
                           "PERPLEXITY_API_BASE"),
    "openrouter": Provider("https://openrouter.ai/api/v1", ("OPENROUTER_API_KEY",),
                           "OPENROUTER_API_BASE"),
    # Anthropic and Gemini through their OpenAI-compatible endpoints.
    "anthropic": Provider("https://api.anthropic.com/v1", ("ANTHROPIC_API_KEY",),
                          "ANTHROPIC_API_BASE"),
    "gemini": Provider("https://generativelanguage.googleapis.com/v1beta/openai",
                       ("GEMINI_API_KEY",), "GEMINI_API_BASE"),
}


def _base_url(prefix: str, provider: Provider) -> str:
    base = os.environ.get(provider.base_env or "") or provider.base_url
    if prefix.startswith("ollama") and not base.rstrip("/").endswith("/v1"):
        base = base.rstrip("/") + "/v1"  # OLLAMA_API_BASE names the server, not its /v1 API
    return base


def _key_env(provider: Provider) -> str | None:
    for name in provider.key_envs:
        if os.environ.get(name):
            return name
    return provider.key_envs[0] if provider.key_envs else None


def resolve_model(
    name: str, *, base_url: str | None = None, api_key: str | None = None
) -> ModelSpec:
    """The upstream for model `name` (not described in a config file).

    - `prefix/model` with a known prefix: the provider's endpoint (or `base_url`), its key
      variable, and `model` sent upstream;
    - a plain name: `base_url`, else $OPENAI_BASE_URL, else OpenAI, with $OPENAI_API_KEY;
    - another `x/y` name: sent whole to `base_url` when one is given (a vLLM server's
      `meta-llama/...`), else a ConfigError naming the known prefixes.

    `api_key` (RouteLLM's --api-key / api_key=) is used instead of the key variable."""
    prefix, sep, rest = name.partition("/")
    if sep and prefix in PROVIDERS and rest:
        provider = PROVIDERS[prefix]
        return ModelSpec(name=name, base_url=base_url or _base_url(prefix, provider),
                         api_key_env=_key_env(provider), api_key=api_key, upstream_model=rest)
    if sep and not base_url:
        raise ConfigError(
            f"model {name!r}: unknown provider prefix {prefix + '/'!r} (known: "
            f"{', '.join(p + '/' for p in PROVIDERS)}); give the model's endpoint with "
            f"--base-url or a models: entry in the config, or write openai/{name} to send it "
            "to $OPENAI_BASE_URL"
        )
    openai = PROVIDERS["openai"]
    return ModelSpec(name=name, base_url=base_url or _base_url("openai", openai),
                     api_key_env="OPENAI_API_KEY", api_key=api_key)
