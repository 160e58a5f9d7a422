"""Build a shipped card's prompt score cache (see switchllm/routers/score_cache.py): the card's
model scores of every shipped benchmark prompt, so `make run` need not recompute them.

    python scripts/build_score_cache.py            # the default bert card
    python scripts/build_score_cache.py CARD_DIR   # any card with model_scores

Rerun it after retraining the card: a cache of other weights is ignored, never used.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from switchllm.data.benchmarks import BENCHMARKS, load_benchmark
from switchllm.routers import DEFAULTS_DIR, load_card
from switchllm.routers.score_cache import write_score_cache

CHUNK = 1024


def benchmark_prompts() -> list[str]:
    prompts: dict[str, None] = {}
    for name in BENCHMARKS:
        prompts.update(dict.fromkeys(load_benchmark(name).prompts))
    return list(prompts)


def main() -> None:
    card_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULTS_DIR / "bert"
    router = load_card(card_dir)
    router.card_info.pop("path", None)  # compute every score: never read an old cache
    prompts = benchmark_prompts()
    started = time.perf_counter()
    scores = np.empty((len(prompts), len(router.models)), dtype=np.float32)
    for start in range(0, len(prompts), CHUNK):
        scores[start:start + CHUNK] = router.model_scores(prompts[start:start + CHUNK])
        print(f"{min(start + CHUNK, len(prompts))}/{len(prompts)} prompts scored, "
              f"{time.perf_counter() - started:.0f}s", flush=True)
    path = write_score_cache(card_dir, prompts, scores, router.models)
    print(f"wrote {path}: {len(prompts)} prompts, {path.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
