"""RouteLLM's `routellm.routers.routers` names: `ROUTER_CLS` maps each router name to its class
(imported on first access, so `ROUTER_CLS.keys()` as argparse choices loads no torch)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping

from switchllm.routers import ROUTER_KINDS, Router, router_class


class _RouterClasses(Mapping[str, type[Router]]):
    def __getitem__(self, name: str) -> type[Router]:
        if name not in ROUTER_KINDS:
            raise KeyError(name)
        return router_class(name)

    def __iter__(self) -> Iterator[str]:
        return iter(ROUTER_KINDS)

    def __len__(self) -> int:
        return len(ROUTER_KINDS)

    def __repr__(self) -> str:
        return f"ROUTER_CLS({', '.join(ROUTER_KINDS)})"


ROUTER_CLS: Mapping[str, type[Router]] = _RouterClasses()

__all__ = ["ROUTER_CLS", "Router"]
