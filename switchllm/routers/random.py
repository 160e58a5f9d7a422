"""The random router: a win rate drawn uniformly from [0, 1], the baseline every router must beat.

Its expected routing quality is the straight line between the weak and the strong model
(APGR about 0.5)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from switchllm.routers.base import Router


class RandomRouter(Router):
    kind = "random"
    params = ("seed",)

    def __init__(self, seed: int | None = None) -> None:
        super().__init__()
        self.seed = seed
        self._rng = np.random.default_rng(seed)
        # The win rate is uniform whatever the prompts: its quantiles are exact.
        levels = np.round(np.linspace(0.0, 1.0, 101), 2)
        self.card_info["calibration"] = {
            "pair": list(self.default_pair),
            "levels": levels.tolist(),
            "quantiles": levels.tolist(),
            "n_prompts": 0,
        }

    def win_rate(
        self, prompts: Sequence[str], strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        self.resolve_pair(strong, weak)
        return self._rng.uniform(0.0, 1.0, size=len(prompts))
