"""How many prompts the shipped `causal_llm` card trains on, chosen on training data only (never
MT-Bench or the RouterBench test split).

`train N DIR [PARAMS_JSON]` trains a card as `scripts/train_defaults.py causal_llm` does (its
`CAUSAL_PARAMS`, its seeded sample of N prompts, its validation split), into DIR instead of the
shipped directory. `score CARD...` gives each card's APGR (RouteLLM's pair) on a common
validation set: 1,500 prompts where the pair met in `router_training_battles`, outside the
seeded sample of `MAX_PROMPTS` (the samples nest, so outside every smaller one too). Each card's
own validation split differs with N; this set is the same for all.

    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/causal_variants.py train 2400 /tmp/c2400
    PYTHONPATH=. OMP_NUM_THREADS=1 python bench/causal_variants.py score /tmp/c800 /tmp/c2400
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import train_defaults as td  # noqa: E402

from switchllm.data.benchmarks import (  # noqa: E402
    DEFAULT_TRAINING_EXCLUDE,
    router_training_battles,
)
from switchllm.data.own_data import shipped_sets, training_provenance  # noqa: E402
from switchllm.routers import load_card  # noqa: E402
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL  # noqa: E402
from switchllm.training import apgr, pair_gains, train_router  # noqa: E402

MAX_PROMPTS = 4000  # the largest sample tried
COMMON_PROMPTS = 1500
COMMON_SEED = 12345


def train(n_prompts: int, output: str, extra: dict) -> None:
    params = {**td.CAUSAL_PARAMS, **extra}
    data = td.training_data("causal_llm", router_training_battles(), causal_prompts=n_prompts)
    started = time.perf_counter()
    result = train_router("causal_llm", data, output, val_fraction=0.1, seed=td.SEED,
                          params=params, progress=False,
                          provenance=training_provenance(
                              [], shipped_sets(DEFAULT_TRAINING_EXCLUDE)))
    print(f"{output}: {n_prompts} prompts {params}: {time.perf_counter() - started:.0f}s, "
          f"validation {json.dumps(result.metrics)}", flush=True)


def score(cards: list[str]) -> None:
    battles = router_training_battles()
    used = set(td.training_data("causal_llm", battles, causal_prompts=MAX_PROMPTS).prompts)
    prompts, gains = pair_gains(battles, DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL)
    free = np.array([i for i, p in enumerate(prompts) if battles.prompts[p] not in used])
    pick = np.random.default_rng(COMMON_SEED).choice(free, COMMON_PROMPTS, replace=False)
    texts, g = [battles.prompts[prompts[i]] for i in pick], gains[pick]
    print(f"common validation: {len(texts)} prompts, mean gain {g.mean():.3f}", flush=True)
    for card in cards:
        router = load_card(card)
        router.card_info.pop("path", None)  # compute every score: never a score cache
        started = time.perf_counter()
        rates = np.asarray(router.win_rate(texts, DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL))
        rng = np.random.default_rng(0)
        boots = [apgr(rates[ix], g[ix]) for ix in
                 (rng.integers(0, len(g), len(g)) for _ in range(200))]
        print(f"{card}: APGR {apgr(rates, g):.4f} (bootstrap sd "
              f"{np.std([b for b in boots if b is not None]):.3f}), "
              f"{time.perf_counter() - started:.0f}s", flush=True)


def main() -> None:
    import torch

    torch.set_num_threads(1)
    if sys.argv[1:2] == ["train"]:
        train(int(sys.argv[2]), sys.argv[3], json.loads(sys.argv[4]) if len(sys.argv) > 4 else {})
    elif sys.argv[1:2] == ["score"]:
        score(sys.argv[2:])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()
