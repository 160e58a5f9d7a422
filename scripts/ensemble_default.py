"""Build the shipped default ensemble card (`switchllm/routers/defaults/ensemble/`), choosing
its members and L2 penalty on held-out validation data only.

The stacking set is every prompt of the shipped training data (`router_training_battles`) that
no member card trained on: the cards' recorded validation splits (`scripts/train_defaults.py`
holds out 5% of prompts, seed 0; bert trains on a 4,000-prompt sample). Each candidate (a subset
of members and an `l2`) is scored by 5-fold cross-validation over the stacking set's prompts:
APGR of RouteLLM's pair (gpt-4-1106-preview vs Mixtral-8x7B) and log-loss on every battle.
The best by APGR is fitted on the whole stacking set and saved with `--write`. MT-Bench and the
test splits are never looked at here.

    python scripts/ensemble_default.py                 # report the candidates
    python scripts/ensemble_default.py --write         # and write the default card
"""

from __future__ import annotations

import argparse
import itertools
import json
import time

import numpy as np

from switchllm.data.battles import Battles
from switchllm.data.benchmarks import DEFAULT_TRAINING_EXCLUDE, router_training_battles
from switchllm.data.own_data import shipped_sets, training_provenance
from switchllm.routers import DEFAULTS_DIR, load_router
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL
from switchllm.routers.ensemble import (
    EnsembleRouter,
    fit_stacking_weights,
    stacking_features,
    usable_battles,
)
from switchllm.training import apgr, pair_gains, split_by_prompt

CANDIDATE_MEMBERS = ("knn", "mf", "sw_ranking", "bert", "causal_llm")
L2_GRID = (0.1, 1.0, 10.0, 100.0, 1000.0)
FOLDS = 5
SEED = 0


def member_training_prompts(kind: str, battles: Battles) -> set[str]:
    """The prompts the shipped `kind` card trained on, replayed from its recipe
    (`scripts/train_defaults.py`) and checked against the card's data fingerprint."""
    from train_defaults import training_data  # noqa: PLC0415 - the recipe lives there

    card = json.loads((DEFAULTS_DIR / kind / "router.json").read_text())
    data = training_data(kind, battles)
    if card.get("fingerprint") != data.fingerprint():
        raise SystemExit(f"the shipped {kind} card was not trained on the recipe's data "
                         "(fingerprint differs): retrain it with scripts/train_defaults.py")
    info = card.get("training", {})
    train, _ = split_by_prompt(data, float(info.get("val_fraction", 0.0)), int(info.get("seed", 0)))
    return set(train.prompts)


def stacking_set(kinds: list[str], battles: Battles) -> Battles:
    seen: set[str] = set()
    for kind in kinds:
        seen |= member_training_prompts(kind, battles)
    return battles.select_prompts(np.array([p not in seen for p in battles.prompts]))


def pair_rows(battles: Battles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(battle rows of RouteLLM's pair, strong-first sign, their prompt) for APGR."""
    s, w = battles.models.index(DEFAULT_STRONG_MODEL), battles.models.index(DEFAULT_WEAK_MODEL)
    fwd = (battles.model_a == s) & (battles.model_b == w)
    bwd = (battles.model_a == w) & (battles.model_b == s)
    rows = np.nonzero(fwd | bwd)[0]
    return rows, np.where(fwd[rows], 1.0, -1.0), battles.prompt_idx[rows]


def cv_scores(x: np.ndarray, y: np.ndarray, s: np.ndarray, fold: np.ndarray, sub: Battles,
              l2: float) -> dict[str, float]:
    """Out-of-fold APGR (pair) and log-loss of stacking weights fitted on the other folds."""
    z = np.empty(len(y))
    for k in range(FOLDS):
        test = fold == k
        w = fit_stacking_weights(x[~test], y[~test], s[~test], l2)
        z[test] = x[test] @ w
    p = np.clip(1 / (1 + np.exp(-z)), 1e-6, 1 - 1e-6)
    loss = float(-(s * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / s.sum())
    rows, sign, prompts = pair_rows(sub)
    met, gains = pair_gains(sub, DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL)
    # one strong-first logit per prompt (a prompt's pair battles share it)
    logit_of_prompt = dict(zip(prompts, sign * z[rows], strict=True))
    rates = 1 / (1 + np.exp(-np.array([logit_of_prompt[i] for i in met])))
    return {"apgr": round(float(apgr(rates, gains)), 4), "log_loss": round(loss, 5)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", default=",".join(CANDIDATE_MEMBERS),
                        help="candidate members (shipped defaults); missing ones are skipped")
    parser.add_argument("--write", action="store_true", help="write the default card")
    args = parser.parse_args()

    kinds = [k for k in args.members.split(",") if (DEFAULTS_DIR / k / "router.json").is_file()]
    battles = router_training_battles()
    stack = stacking_set(kinds, battles)
    print(f"stacking set: {len(stack.prompts)} prompts, {len(stack)} battles held out from "
          f"every candidate ({', '.join(kinds)})")
    started = time.perf_counter()
    routers = [load_router(k) for k in kinds]
    x, y, s = stacking_features(routers, stack)
    print(f"member win rates on the stacking set: {time.perf_counter() - started:.0f}s")
    # the same battles, in stacking_features' row order (between models every candidate knows:
    # with causal_llm, only RouteLLM's pair)
    sub = usable_battles(routers, stack)
    order = np.random.default_rng(SEED).permutation(len(stack.prompts))
    prompt_fold = np.empty(len(stack.prompts), dtype=np.int64)
    prompt_fold[order] = np.arange(len(order)) % FOLDS
    fold = prompt_fold[sub.prompt_idx]

    results = []
    for size in range(1, len(kinds) + 1):
        for subset in itertools.combinations(range(len(kinds)), size):
            for l2 in (L2_GRID if size > 1 else L2_GRID[:1]):
                score = cv_scores(x[:, subset], y, s, fold, sub, l2)
                results.append(({"members": [kinds[i] for i in subset], "l2": l2}, score))
                print(f"  {'+'.join(kinds[i] for i in subset):<36} l2={l2:<6} "
                      f"APGR {score['apgr']:.4f}  log-loss {score['log_loss']:.5f}")
    best, score = max(results, key=lambda r: (r[1]["apgr"], -r[1]["log_loss"]))
    print(f"best on validation: {best} {score}")
    if not args.write:
        return
    ensemble = EnsembleRouter(members=best["members"], l2=best["l2"])
    chosen = [routers[kinds.index(m)] for m in best["members"]]
    ensemble.weights = ensemble.fit_weights(chosen, stack)
    ensemble.default_pair = (DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL)
    ensemble.calibrate(stack.prompts)
    ensemble.card_info["calibration"]["source"] = "stacking set (held out by every member)"
    ensemble.card_info.update({
        "fingerprint": stack.fingerprint(),
        "training": {"prompts": len(stack.prompts), "battles": len(stack),
                     "models": len(stack.models), "seed": SEED,
                     "selection": {"folds": FOLDS, "candidates": len(results),
                                   "cv_validation": score},
                     **training_provenance([], shipped_sets(DEFAULT_TRAINING_EXCLUDE))},
        "validation": {"cv_" + k: v for k, v in score.items()},
    })
    path = ensemble.save(DEFAULTS_DIR / "ensemble")
    weights = {m: round(float(w), 4)
               for m, w in zip(best["members"], ensemble.weights, strict=True)}
    print(f"wrote {path}: weights {weights}")


if __name__ == "__main__":
    main()
