"""Train the default router cards shipped in `switchllm/routers/defaults/<kind>/`.

Every default is trained on all shipped sets except MT-Bench and the MT-Bench human votes (see
`switchllm.data.benchmarks.router_training_battles`, which also gives RouteLLM's pair half the
training weight), so MT-Bench stays an honest held-out test.
`bert` is fine-tuned on a random sample of prompts (all their battles) to fit a CPU budget.

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
from switchllm.training import train_router

KINDS = ("mf", "sw_ranking", "knn", "bert")
BERT_PROMPTS = 4000  # ~10 minutes of CPU fine-tuning
SEED = 0


def training_data(kind: str, battles: Battles, bert_prompts: int = BERT_PROMPTS) -> Battles:
    """What the default `kind` card is trained on (before its 5% validation split): all of
    `battles`, or for bert a seeded sample of prompts (also used by ensemble_default.py to
    find the prompts a card never saw)."""
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
    args = parser.parse_args()

    battles = router_training_battles()
    print(f"training data: {len(battles.prompts)} prompts, {len(battles)} battles, "
          f"{len(battles.models)} models")
    for kind in args.kinds:
        data = training_data(kind, battles, args.bert_prompts)
        started = time.perf_counter()
        result = train_router(kind, data, DEFAULTS_DIR / kind, val_fraction=0.05, seed=SEED,
                              share_shipped_embeddings=True,
                              provenance=training_provenance(
                                  [], shipped_sets(DEFAULT_TRAINING_EXCLUDE)))
        print(f"{kind}: {time.perf_counter() - started:.0f}s, validation "
              f"{json.dumps(result.metrics)}")
    if "bert" in args.kinds:  # the old card's prompt scores no longer match: recompute them
        print("bert: rebuilding its prompt score cache (scripts/build_score_cache.py)")
        subprocess.run([sys.executable, str(Path(__file__).with_name("build_score_cache.py"))],
                       check=True)


if __name__ == "__main__":
    main()
