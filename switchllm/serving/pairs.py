"""Which pair each router scores, matched against the served pair.

Routers that learned per-model quality know their training models by name (`gpt-4-1106-preview`,
`mistralai/Mixtral-8x7B-Instruct-v0.1`). A served name matches a known one exactly, after
removing a litellm provider prefix (`anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1`), or
case-insensitively. When a router does not know both served models it answers for its own
training pair (as RouteLLM's routers always do): `serve` and `Controller` say so at start-up.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from switchllm.routers import Router

log = logging.getLogger("switchllm.serving")


def known_name(router: Router, served: str) -> str | None:
    """The router's own name for served model `served`, or None when it does not know it."""
    from switchllm.serving.providers import PROVIDERS

    if served in router.models:
        return served
    candidates = [served]
    prefix, sep, rest = served.partition("/")
    if sep and prefix in PROVIDERS and rest:
        candidates.append(rest)
    lowered = {m.lower(): m for m in router.models}
    for candidate in candidates:
        if candidate in router.models:
            return candidate
        if candidate.lower() in lowered:
            return lowered[candidate.lower()]
    return None


def pair_statement(name: str, router: Router, strong: str, weak: str) -> tuple[bool, str]:
    """(matches, sentence): which pair router `name` scores for the served `strong`/`weak`."""
    if router.kind == "random":
        return True, f"router {name}: random, independent of the pair"
    if router.models:
        pair = (known_name(router, strong), known_name(router, weak))
        if pair[0] and pair[1]:
            return True, f"router {name} scores the served pair ({pair[0]} vs {pair[1]})"
        missing = [s for s, k in zip((strong, weak), pair, strict=True) if k is None]
        what = f"does not know {' or '.join(repr(m) for m in missing)}"
    else:
        default = {m.lower() for m in router.default_pair}
        if {strong.lower(), weak.lower()} == default:
            return True, f"router {name} scores the served pair ({strong} vs {weak})"
        what = "was trained on one pair only"
    own = " vs ".join(router.default_pair)
    return False, (f"router {name} {what}: it scores its training pair ({own}) and its "
                   f"decisions are applied to the served pair ({strong} vs {weak}); thresholds "
                   "and strong shares may not mean what they say")


def state_pairs(routers: Mapping[str, Router], strong: str, weak: str) -> list[str]:
    """Log (warning when it is not the served pair) and return each router's statement."""
    lines = []
    for name, router in routers.items():
        matches, sentence = pair_statement(name, router, strong, weak)
        (log.info if matches else log.warning)(sentence)
        lines.append(sentence if matches else "warning: " + sentence)
    return lines
