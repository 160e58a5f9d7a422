"""Your own labels next to the shipped sets: `switchllm train --with-shipped`, the learning
curves of `switchllm eval --train-sizes`, and what a card records about its training prompts.

`with_shipped` trains on the shipped recipe (`router_training_battles`: every shipped training
set except `exclude`, RouteLLM's pair emphasised) plus your battles, which carry the share
`weight` of the total training weight, so a few hundred labels are not drowned by 360k
shipped battles. A prompt you labelled is dropped from the shipped part: your label wins.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from switchllm.data.battles import Battles
from switchllm.data.benchmarks import (
    DEFAULT_TRAINING_EXCLUDE,
    SHARED_PROMPTS,
    TEST_SPLITS,
    TRAINING_SOURCES,
    router_training_battles,
)
from switchllm.errors import SwitchLLMError

# Share of the training weight carried by the user's battles under --with-shipped. Chosen on
# validation splits of GSM8K and MMLU (docs/RESULTS.md, "Your own labels"), never on MT-Bench.
DEFAULT_USER_WEIGHT = 0.9
MAX_PROMPT_DIGESTS = 200_000  # a card records at most this many of its own prompts' digests


def weighted_concat(base: Battles, extra: Battles, share: float) -> Battles:
    """`base` and `extra` together, `extra`'s weights scaled to carry `share` of the total."""
    if not 0.0 < share < 1.0:
        raise SwitchLLMError(f"--weight must be between 0 and 1 (exclusive), got {share}")
    base_weight, extra_weight = float(base.weight.sum()), float(extra.weight.sum())
    scale = share / (1.0 - share) * base_weight / extra_weight
    scaled = Battles(extra.prompts, extra.models, extra.prompt_idx, extra.model_a,
                     extra.model_b, extra.outcome, (extra.weight * scale).astype(np.float32))
    return base.concat(scaled)


def with_shipped(user: Battles, weight: float = DEFAULT_USER_WEIGHT,
                 exclude: Iterable[str] = DEFAULT_TRAINING_EXCLUDE, strong: str | None = None,
                 weak: str | None = None) -> Battles:
    """The shipped recipe minus `exclude` plus `user` at `weight` of the total weight."""
    shipped = router_training_battles(exclude, strong, weak)
    mine = set(user.prompts)
    shipped = shipped.select_prompts(np.array([p not in mine for p in shipped.prompts]))
    return weighted_concat(shipped, user, weight)


def shipped_sets(exclude: Iterable[str]) -> list[str]:
    """The shipped training sets the recipe uses when `exclude` is left out."""
    excluded = set(exclude)
    return [name for name in TRAINING_SOURCES if name not in excluded]


def prompt_digest(prompt: str) -> str:
    """A short stable digest of a prompt text (64 bits of sha256), stored on cards."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:16]


def training_provenance(own_prompts: Sequence[str], sets: Sequence[str]) -> dict[str, Any]:
    """What a card records to tell later whether a benchmark is in its sample: the shipped
    sets it was trained on and digests of its other (the user's) training prompts."""
    digests = sorted({prompt_digest(p) for p in own_prompts})
    return {"shipped_sets": list(sets), "prompt_digests": digests[:MAX_PROMPT_DIGESTS],
            "prompt_digests_complete": len(digests) <= MAX_PROMPT_DIGESTS}


def in_sample(training: dict[str, Any], benchmark: str, prompts: Sequence[str]
              ) -> dict[str, Any] | None:
    """Why a card trained with `training` (its card's "training" entry) has seen `benchmark`
    (name, prompt texts), or None. A shipped set counts unless only its train split was used
    (RouterBench, LLMRouter: the benchmark is the test split)."""
    reasons: dict[str, Any] = {}
    sets = set(training.get("shipped_sets") or [])
    seen = {benchmark, *SHARED_PROMPTS.get(benchmark, set())} & sets - TEST_SPLITS
    if seen:
        reasons["shipped_sets"] = sorted(seen)
    digests = set(training.get("prompt_digests") or [])
    if digests:
        overlap = sum(prompt_digest(p) in digests for p in prompts)
        if overlap:
            reasons["prompts"] = overlap
            reasons["share"] = round(overlap / max(1, len(prompts)), 4)
    return reasons or None
