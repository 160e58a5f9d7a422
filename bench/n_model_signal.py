"""How much per-prompt routing signal RouterBench's prompts carry, on its train split only.

Two numbers bound what an N-model router can reach there (docs/RESULTS.md, "What stops the
missed targets"):

1. Within each task, how well a prompt's embedding predicts whether a model answers it right:
   AUC of knn's measured-quality estimate (5-fold CV inside the task), for the plain and the
   `+tail` embedding. 0.5 = no signal.
2. A router that knows each prompt's task and every model's accuracy on that task (from the
   other folds) but nothing within the task: its willingness-to-pay sweep, and the share of
   GPT-4's cost at which it first reaches GPT-4's accuracy.

    PYTHONPATH=. python bench/n_model_signal.py
"""

from __future__ import annotations

import numpy as np

from switchllm.embeddings import LOCAL_MODEL, LOCAL_TAIL_MODEL, get_embedder
from switchllm.evaluation.n_model_eval import CostModel, held_out_splits
from switchllm.evaluation.n_models import compare, sweep

MODELS = ("gpt-4-1106-preview", "zero-one-ai/Yi-34B-Chat",
          "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-3.5-turbo-1106")
FOLDS, K = 5, 32


def auc(score: np.ndarray, label: np.ndarray) -> float:
    """Area under the ROC curve (ties count half), from ranks."""
    pos, neg = score[label], score[~label]
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).mean()
    return float(greater + 0.5 * (pos[:, None] == neg[None, :]).mean())


def knn_estimate(vectors: np.ndarray, right: np.ndarray, folds: np.ndarray) -> np.ndarray:
    out = np.zeros(len(right))
    for f in range(FOLDS):
        train, test = folds != f, folds == f
        sims = vectors[test] @ vectors[train].T
        idx = np.argpartition(-sims, K - 1, axis=1)[:, :K]
        out[test] = right[train][idx].mean(axis=1)
    return out


def main() -> None:
    train, _ = held_out_splits("routerbench")
    tasks = np.array(train.tasks)
    folds = np.random.default_rng(0).permutation(len(tasks)) % FOLDS
    vectors = {name: get_embedder(name).embed(train.prompts) for name in (LOCAL_MODEL,
                                                                          LOCAL_TAIL_MODEL)}
    print("within-task AUC of knn's estimate that the model is right (5-fold CV)")
    print(f"{'task':15s} {'model':38s} {'accuracy':>8s} {'plain':>6s} {'+tail':>6s}")
    for task in sorted(set(train.tasks)):
        rows = tasks == task
        for model in MODELS:
            right = train.quality[rows, train.models.index(model)] > 0.5
            aucs = [auc(knn_estimate(v[rows], right, folds[rows]), right)
                    for v in vectors.values()]
            print(f"{task:15s} {model:38s} {right.mean():8.3f} {aucs[0]:6.3f} {aucs[1]:6.3f}")
    # the task-level router: each model's accuracy on the prompt's task, from the other folds
    predicted, expected = np.zeros(train.quality.shape), np.zeros(train.quality.shape)
    for f in range(FOLDS):
        fit, test = folds != f, folds == f
        for task in set(train.tasks):
            predicted[test & (tasks == task)] = train.quality[fit & (tasks == task)].mean(axis=0)
        expected[test] = CostModel([p for p, m in zip(train.prompts, fit, strict=True) if m],
                                   train.cost[fit]).predict(
            [p for p, m in zip(train.prompts, test, strict=True) if m])
    costs, quality = sweep(predicted, expected, train.quality, train.cost)
    report = compare(train.models, train.quality, train.cost, {"task-level": (costs, quality)})
    entry, best = report["routers"]["task-level"], report["best_single"]
    share = entry["cost_share_of_best_single"]
    print(f"\ntask-level router (5-fold CV on the train split): AIQ {entry['aiq']:.3f} "
          f"(Zero router {report['zero_router']['aiq']:.3f}); max quality "
          f"{entry['max_quality']:.3f} vs {best['model']} {best['quality']:.3f}; reaches it at "
          f"{'never' if share is None else f'{100 * share:.0f}%'} of its cost")


if __name__ == "__main__":
    main()
