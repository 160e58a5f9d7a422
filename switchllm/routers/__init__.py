"""Router registry: router kinds by name, and loading a router from a name or a card directory.

`load_router("random")` builds the random router; `load_router("mf")` loads the default mf card
shipped in the package; `load_router("path/to/card")` loads a card you trained."""

from __future__ import annotations

import importlib
from pathlib import Path

from switchllm.errors import CardError, UnknownRouterError
from switchllm.routers.base import Router, read_card

# kind -> "module:Class"; modules are imported on first use so torch loads only when needed.
ROUTER_KINDS: dict[str, str] = {
    "random": "switchllm.routers.random:RandomRouter",
    "sw_ranking": "switchllm.routers.sw_ranking:SWRankingRouter",
    "mf": "switchllm.routers.mf:MFRouter",
    "knn": "switchllm.routers.knn:KNNRouter",
    "bert": "switchllm.routers.bert:BertRouter",
    "causal_llm": "switchllm.routers.causal_llm:CausalLLMRouter",
    "ensemble": "switchllm.routers.ensemble:EnsembleRouter",
}

# Router cards trained on the shipped data, one directory per kind.
DEFAULTS_DIR = Path(__file__).parent / "defaults"


def router_class(kind: str) -> type[Router]:
    if kind not in ROUTER_KINDS:
        raise UnknownRouterError(
            f"unknown router {kind!r}; known routers: {', '.join(ROUTER_KINDS)}"
        )
    module_name, class_name = ROUTER_KINDS[kind].split(":")
    return getattr(importlib.import_module(module_name), class_name)


def available_routers() -> list[str]:
    """Routers usable by name with no training: random plus every shipped default card."""
    shipped = [k for k in ROUTER_KINDS if (DEFAULTS_DIR / k / "router.json").is_file()]
    return ["random", *shipped]


def load_card(directory: str | Path) -> Router:
    card, tensors = read_card(directory)
    kind = card["type"]
    if kind not in ROUTER_KINDS:
        raise CardError(f"{directory}: unknown router type {kind!r} in router.json")
    router = router_class(kind).from_card(card, tensors)
    router.card_info["path"] = str(Path(directory))  # where it is now, not where it was saved
    return router


def load_router(spec: str | Path) -> Router:
    """A router from a kind name ("random", "mf", ...) or a router card directory."""
    spec_str = str(spec)
    if spec_str == "random":
        return router_class("random")()
    if spec_str in ROUTER_KINDS:
        default = DEFAULTS_DIR / spec_str
        if (default / "router.json").is_file():
            return load_card(default)
        raise UnknownRouterError(
            f"no default {spec_str} router is shipped; train one with "
            f"`switchllm train {spec_str} --data FILE --output DIR` and pass DIR"
        )
    path = Path(spec_str)
    if path.is_dir():
        return load_card(path)
    raise UnknownRouterError(
        f"unknown router {spec_str!r}: not a router name ({', '.join(available_routers())}) "
        "nor a router card directory"
    )


__all__ = ["ROUTER_KINDS", "Router", "available_routers", "load_card", "load_router",
           "router_class"]
