"""Build a shipped card's prompt score cache (see switchllm/routers/score_cache.py): the card's
model scores of every shipped benchmark prompt, so `make run` need not recompute them.

    python scripts/build_score_cache.py            # the default bert card
    python scripts/build_score_cache.py CARD_DIR   # any card with model_scores, or causal_llm

A router caches its `cacheable_scores` (columns `score_cache_columns`: causal_llm's label
probabilities) when it has them, else its `model_scores` (columns: its models). A router that
answers for one pair only (causal_llm) caches only the prompts of benchmarks with that pair.
Rerun it after retraining the card: a cache of other weights is ignored, never used. The file is
rewritten after every chunk, smallest benchmarks first, and a rerun keeps the scores a valid
cache already holds: an interrupted build resumes where it stopped.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from switchllm.data.benchmarks import BENCHMARKS, load_benchmark
from switchllm.routers import DEFAULTS_DIR, load_card
from switchllm.routers.score_cache import ScoreCache, write_score_cache

CHUNK = 256  # rewritten after each chunk: an interrupted build loses little


def benchmark_prompts(pair: tuple[str, str] | None = None) -> list[str]:
    """Every shipped benchmark prompt; with `pair`, those of benchmarks that have both models."""
    prompts: dict[str, None] = {}
    benchmarks = sorted((load_benchmark(name) for name in BENCHMARKS), key=len)
    for benchmark in benchmarks:  # smallest first: a partial build covers whole benchmarks
        if pair is None or set(pair) <= set(benchmark.models):
            prompts.update(dict.fromkeys(benchmark.prompts))
    return list(prompts)


def main() -> None:
    card_dir = Path(sys.argv[1]) if len(sys.argv) > 1 else DEFAULTS_DIR / "bert"
    router = load_card(card_dir)
    router.card_info.pop("path", None)  # compute every score: never read an old cache
    score = getattr(router, "cacheable_scores", router.model_scores)
    columns = list(getattr(router, "score_cache_columns", router.models))
    one_pair = len(router.models) == 2 and hasattr(router, "score_cache_columns")
    prompts = benchmark_prompts(tuple(router.default_pair) if one_pair else None)
    started = time.perf_counter()
    scores = np.full((len(prompts), len(columns)), np.nan, dtype=np.float32)
    old = ScoreCache.for_card(card_dir, columns)  # None unless it matches these weights
    if old is not None:
        rows, cached = old.lookup(prompts)
        scores[rows] = cached
        print(f"kept {len(rows)} scores of the existing cache", flush=True)
    todo = np.nonzero(np.isnan(scores).any(axis=1))[0]
    path = card_dir
    for start in range(0, len(todo), CHUNK):
        rows = todo[start:start + CHUNK]
        scores[rows] = score([prompts[i] for i in rows])
        done = ~np.isnan(scores).any(axis=1)
        path = write_score_cache(card_dir, [p for p, d in zip(prompts, done, strict=True) if d],
                                 scores[done], columns)
        print(f"{min(start + CHUNK, len(todo))}/{len(todo)} prompts scored, "
              f"{time.perf_counter() - started:.0f}s", flush=True)
    print(f"{path}: {len(prompts)} prompts cached")


if __name__ == "__main__":
    main()
