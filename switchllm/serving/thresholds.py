"""Thresholds that mean something: a raw threshold outside the win rates a router card saw in
calibration sends (nearly) every call to one model. Such a threshold is still served, but the
first use logs a warning and every response carries an `x-switchllm-warning` header with the
strong share it implies and the `-s<share>` name to use instead.

RouteLLM's one published operating point, `router-mf-0.11593` (about 50% strong calls on Arena
prompts with RouteLLM's own mf checkpoint), is served as RouteLLM meant it: `router-mf-s0.5`.
No other RouteLLM threshold is mapped (none was published with its strong share)."""

from __future__ import annotations

import logging

import numpy as np

from switchllm.routers import Router
from switchllm.serving.config import RouteRequest

log = logging.getLogger("switchllm.serving")

# (router name, RouteLLM threshold) -> the strong share RouteLLM published for it.
ROUTELLM_PUBLISHED: dict[tuple[str, float], float] = {("mf", 0.11593): 0.5}


def _calibration(router: Router) -> tuple[np.ndarray, np.ndarray] | None:
    calibration = router.card_info.get("calibration") or {}
    if not calibration.get("quantiles") or not calibration.get("levels"):
        return None
    return (np.asarray(calibration["levels"], dtype=float),
            np.asarray(calibration["quantiles"], dtype=float))


def implied_strong_share(router: Router, threshold: float) -> float | None:
    """The share of calibration prompts whose win rate reaches `threshold` (None: no card
    calibration)."""
    found = _calibration(router)
    if found is None:
        return None
    levels, quantiles = found
    return float(1.0 - np.interp(threshold, quantiles, levels))


def advise(router: Router, name: str, request: RouteRequest
           ) -> tuple[RouteRequest, str | None]:
    """(the request to serve, a warning or None) for a client's `request` to router `name`."""
    if request.threshold is None or router.kind == "random":
        return request, None
    found = _calibration(router)
    if found is None:
        return request, None
    published = ROUTELLM_PUBLISHED.get((name, round(request.threshold, 5)))
    if published is not None and router.kind == name:
        served = RouteRequest(name, strong_share=published)
        threshold = router.threshold_for_strong_share(published)
        return served, (
            f"router-{name}-{request.threshold:g} is RouteLLM's threshold for about "
            f"{published:.0%} strong calls with its own {name} checkpoint; served as "
            f"router-{name}-s{published:g} (threshold {threshold:.5f} on this card). "
            f"Use router-{name}-s{published:g}")
    _, quantiles = found
    low, high = float(quantiles[0]), float(quantiles[-1])
    if low <= request.threshold <= high:
        return request, None
    share = implied_strong_share(router, request.threshold)
    assert share is not None
    median = router.threshold_for_strong_share(0.5)
    return request, (
        f"threshold {request.threshold:g} is outside the win rates router {name} saw in "
        f"calibration ({low:.4f}..{high:.4f}): it sends about {share:.0%} of calls to the "
        f"strong model. Name a strong share instead, e.g. router-{name}-s0.5 "
        f"(threshold {median:.5f})")


class ThresholdAdvisor:
    """`advise`, logging each distinct warning once (the first use)."""

    def __init__(self) -> None:
        self._warned: set[tuple[str, float]] = set()

    def __call__(self, router: Router, name: str, request: RouteRequest
                 ) -> tuple[RouteRequest, str | None]:
        served, warning = advise(router, name, request)
        if warning is not None:
            key = (name, float(request.threshold or 0.0))
            if key not in self._warned:
                self._warned.add(key)
                log.warning(warning)
        return served, warning
