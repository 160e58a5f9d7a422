"""What else was tried for the ensemble, on its validation data only (never MT-Bench): extra
member variants retrained on the default cards' training split, and weighting the pair's
battles. Prints out-of-fold APGR (RouteLLM's pair) of the stacking weights, as
`scripts/ensemble_default.py` scores its candidates.

    PYTHONPATH=. python bench/ensemble_variants.py        # ~5 minutes on 2 cores
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import ensemble_default as ed  # noqa: E402

from switchllm.data.battles import Battles  # noqa: E402
from switchllm.data.benchmarks import router_training_battles  # noqa: E402
from switchllm.routers import load_router, router_class  # noqa: E402
from switchllm.routers.ensemble import fit_stacking_weights, stacking_features  # noqa: E402
from switchllm.training import apgr, pair_gains, split_by_prompt  # noqa: E402

VARIANTS = {  # retrained on the shipped cards' 95% training split
    "knn_k64": ("knn", {"k": 64}),
    "knn_tf25": ("knn", {"text_features": 0.25}),
    "knn_k1024": ("knn", {"k": 1024, "temperature": 0.1}),
    "sw_tf": ("sw_ranking", {"text_features": 0.1}),
}


def main() -> None:
    battles = router_training_battles()
    stack = ed.stacking_set(["knn", "mf", "sw_ranking", "bert"], battles)
    train, _ = split_by_prompt(battles, 0.05, ed.SEED)
    routers = {name: router_class(kind)(**params).fit(train)
               for name, (kind, params) in VARIANTS.items()}
    routers.update({k: load_router(k) for k in ("knn", "mf", "sw_ranking")})
    columns = {}
    for name, router in routers.items():
        x, y, s = stacking_features([router], stack)
        columns[name] = x[:, 0]
    rows = stack.model_a != stack.model_b
    sub = Battles(stack.prompts, stack.models, stack.prompt_idx[rows], stack.model_a[rows],
                  stack.model_b[rows], stack.outcome[rows], stack.weight[rows])
    order = np.random.default_rng(ed.SEED).permutation(len(stack.prompts))
    prompt_fold = np.empty(len(stack.prompts), dtype=np.int64)
    prompt_fold[order] = np.arange(len(order)) % ed.FOLDS
    fold = prompt_fold[sub.prompt_idx]

    print("member subsets (weights on every pair's battles):")
    results = []
    for size in (1, 2, 3, 4):
        for combo in itertools.combinations(columns, size):
            x = np.stack([columns[n] for n in combo], axis=1)
            for l2 in ((1.0,) if size == 1 else (1.0, 100.0)):
                score = ed.cv_scores(x, y, s, fold, sub, l2)
                results.append((score["apgr"], "+".join(combo), l2))
    for score, combo, l2 in sorted(results, reverse=True)[:10]:
        print(f"  {combo:<40} l2={l2:<6} APGR {score:.4f}")
    for score, combo, _ in results[:len(columns)]:
        print(f"  alone: {combo:<33} APGR {score:.4f}")

    print("pair weighting (knn+mf+sw_ranking, l2 100):")
    x = np.stack([columns[n] for n in ("knn", "mf", "sw_ranking")], axis=1)
    pair, sign, prompts = ed.pair_rows(sub)
    is_pair = np.zeros(len(y), dtype=bool)
    is_pair[pair] = True
    met, gains = pair_gains(sub, ed.DEFAULT_STRONG_MODEL, ed.DEFAULT_WEAK_MODEL)
    for mode in ("every pair", "the pair only", "the pair 4x"):
        z = np.empty(len(y))
        for k in range(ed.FOLDS):
            test = fold == k
            fit = ~test & is_pair if mode == "the pair only" else ~test
            weights = s * np.where(is_pair, 4.0, 1.0) if mode == "the pair 4x" else s
            z[test] = x[test] @ fit_stacking_weights(x[fit], y[fit], weights[fit], 100.0)
        logit_of = dict(zip(prompts, sign * z[pair], strict=True))
        rates = 1 / (1 + np.exp(-np.array([logit_of[i] for i in met])))
        print(f"  {mode:<14} APGR {apgr(rates, gains):.4f}")


if __name__ == "__main__":
    main()
