"""RouteLLM's Python names, as a thin layer over switchllm (not a second implementation).

RouteLLM code keeps working after changing `routellm` to `switchllm` in its imports:
`RoutingError`, `ModelPair` and `GPT_4_AUGMENTED_CONFIG` (re-exported by
switchllm.controller), `ROUTER_CLS` (switchllm.routers.routers), responses that allow
RouteLLM's documented dict-style access (`response.choices[0]["message"]["content"]`, as
litellm's responses do), and litellm's habit of passing unknown keyword arguments
(`repetition_penalty=1.1`) on to the upstream request body.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

from openai.types.chat import chat_completion, chat_completion_chunk
from openai.types.chat.chat_completion import ChatCompletion
from openai.types.chat.chat_completion_chunk import ChatCompletionChunk, ChoiceDelta
from openai.types.chat.chat_completion_message import ChatCompletionMessage

from switchllm.serving.config import ModelNameError

# RouteLLM raises RoutingError for a bad router name or threshold; switchllm's ModelNameError
# is that error (`except RoutingError` catches it).
RoutingError = ModelNameError


@dataclass
class ModelPair:
    """The strong and the weak model (RouteLLM's `controller.model_pair`)."""

    strong: str
    weak: str


# RouteLLM's default router config (the same as its config.example.yaml): routers trained on
# Arena battles augmented with GPT-4-judge labels. Its checkpoints live on a model hub, which
# switchllm never downloads from; a router section whose checkpoint_path is not a local router
# card directory is served by switchllm's shipped card for that router.
GPT_4_AUGMENTED_CONFIG: dict[str, dict[str, Any]] = {
    "sw_ranking": {
        "arena_battle_datasets": [
            "lmsys/lmsys-arena-human-preference-55k",
            "routellm/gpt4_judge_battles",
        ],
        "arena_embedding_datasets": [
            "routellm/arena_battles_embeddings",
            "routellm/gpt4_judge_battles_embeddings",
        ],
    },
    "causal_llm": {"checkpoint_path": "routellm/causal_llm_gpt4_augmented"},
    "bert": {"checkpoint_path": "routellm/bert_gpt4_augmented"},
    "mf": {"checkpoint_path": "routellm/mf_gpt4_augmented"},
}


# ---- dict-style access on the openai response types -------------------------------------------
class DictAccess:
    """`obj["field"]` and `obj.get("field")` on pydantic models, as litellm's responses allow."""

    def __getitem__(self, key: str) -> Any:
        try:
            return getattr(self, key)
        except AttributeError:
            raise KeyError(key) from None

    def __contains__(self, key: str) -> bool:
        return hasattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


class RoutedMessage(DictAccess, ChatCompletionMessage):
    pass


class RoutedChoice(DictAccess, chat_completion.Choice):
    message: RoutedMessage


class RoutedChatCompletion(DictAccess, ChatCompletion):
    """An openai ChatCompletion (isinstance holds) that also allows dict-style access."""

    choices: list[RoutedChoice]


class RoutedDelta(DictAccess, ChoiceDelta):
    pass


class RoutedChunkChoice(DictAccess, chat_completion_chunk.Choice):
    delta: RoutedDelta


class RoutedChatCompletionChunk(DictAccess, ChatCompletionChunk):
    choices: list[RoutedChunkChoice]


def with_dict_access(response: Any) -> Any:
    """The same response as a type that also allows dict-style access (other objects as is)."""
    if isinstance(response, ChatCompletionChunk) and not isinstance(response, DictAccess):
        return RoutedChatCompletionChunk.model_validate(response.model_dump())
    if isinstance(response, ChatCompletion) and not isinstance(response, DictAccess):
        return RoutedChatCompletion.model_validate(response.model_dump())
    return response


# ---- litellm-style keyword passthrough -------------------------------------------------------
@cache
def _create_parameters() -> frozenset[str]:
    from openai.resources.chat.completions import Completions

    return frozenset(inspect.signature(Completions.create).parameters) - {"self"}


def split_extra_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    """`kwargs` for openai's `chat.completions.create`, with every argument it does not know
    (vLLM's `repetition_penalty`, `top_k`, ...) moved into `extra_body`, so that it reaches
    the upstream request body instead of raising TypeError."""
    known = _create_parameters()
    sent = {k: v for k, v in kwargs.items() if k in known}
    extra = {k: v for k, v in kwargs.items() if k not in known}
    if extra:
        sent["extra_body"] = {**(kwargs.get("extra_body") or {}), **extra}
    return sent
