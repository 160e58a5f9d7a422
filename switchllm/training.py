"""Training data -> a fitted router card on disk, for any router kind.

`train_router` splits the battles by prompt into training and validation sets (a prompt's
battles never straddle both), fits the router on the training set, measures it on the
validation set (log-loss and accuracy on non-tie battles; APGR of the default pair's win rates),
stores win-rate calibration quantiles and a data fingerprint on the card, and saves it.
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from switchllm.data.battles import Battles
from switchllm.errors import DataError, SwitchLLMError
from switchllm.routers import router_class
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL, Router
from switchllm.routers.choice import fit_quality_calibration, scores_router

MIN_VALIDATION_CALIBRATION = 200  # fewer held-out prompts than this: calibrate on training ones
MAX_CALIBRATION_PROMPTS = 5000


@dataclass
class TrainResult:
    router: Router
    output: Path
    metrics: dict[str, Any]


# ---- metrics -----------------------------------------------------------------------------------
def apgr(win_rates: np.ndarray, gains: np.ndarray) -> float | None:
    """APGR of routing by `win_rates` when the strong model gains `gains[i]` over the weak one
    on prompt i: `switchllm eval`'s metric with the weak model's quality as zero. None when the
    strong model is not better overall (PGR undefined)."""
    from switchllm.evaluation import metrics

    gains = np.asarray(gains, dtype=np.float64)
    if len(gains) == 0 or gains.mean() <= 0:
        return None
    curve = metrics.routing_curve(np.asarray(win_rates, np.float64), gains, np.zeros_like(gains))
    return metrics.apgr(curve, 0.0, float(gains.mean()))


def predict_battles(router: Router, battles: Battles) -> np.ndarray:
    """The router's P(model_a beats model_b) for every battle (batched per model pair)."""
    from switchllm.routers.embedding_router import EmbeddingRouter

    embeddings = (router.embed(battles.prompts) if isinstance(router, EmbeddingRouter)
                  else None)
    out = np.empty(len(battles))
    if getattr(router, "scores_are_logits", False):  # one scoring pass answers every pair
        index = np.array([router.models.index(m) for m in battles.models])
        scores = (router.model_scores_from_embeddings(embeddings) if embeddings is not None
                  else router.model_scores(battles.prompts))[:, index]
        rows = battles.prompt_idx
        diff = scores[rows, battles.model_a] - scores[rows, battles.model_b]
        return 1.0 / (1.0 + np.exp(-diff))
    pairs = np.unique(np.stack([battles.model_a, battles.model_b], axis=1), axis=0)
    for a, b in pairs:
        rows = np.nonzero((battles.model_a == a) & (battles.model_b == b))[0]
        prompt_rows = battles.prompt_idx[rows]
        strong, weak = battles.models[a], battles.models[b]
        if embeddings is not None:
            out[rows] = router.win_rate_from_embeddings(embeddings[prompt_rows], strong, weak)
        else:
            out[rows] = router.win_rate([battles.prompts[p] for p in prompt_rows], strong, weak)
    return out


def pair_gains(battles: Battles, strong: str, weak: str) -> tuple[np.ndarray, np.ndarray]:
    """(prompt indices, gain of strong over weak) for prompts where the pair met: the gain is
    2 * (strong's mean result) - 1, in [-1, 1]. For labels turned into battles this equals
    correct(strong) - correct(weak), so APGR on it equals APGR on the labels."""
    if strong not in battles.models or weak not in battles.models:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    s, w = battles.models.index(strong), battles.models.index(weak)
    forward = (battles.model_a == s) & (battles.model_b == w)
    backward = (battles.model_a == w) & (battles.model_b == s)
    rows = forward | backward
    result = np.where(forward, battles.outcome, 1.0 - battles.outcome)[rows]
    prompts = battles.prompt_idx[rows]
    weights = battles.weight[rows].astype(np.float64)
    totals = np.bincount(prompts, weights * result, minlength=len(battles.prompts))
    counts = np.bincount(prompts, weights, minlength=len(battles.prompts))
    met = np.nonzero(counts > 0)[0]
    return met, 2.0 * totals[met] / counts[met] - 1.0


def validation_metrics(router: Router, battles: Battles) -> dict[str, Any]:
    """Log-loss and accuracy on non-tie battles; APGR of the default pair where it met."""
    metrics: dict[str, Any] = {"prompts": len(battles.prompts), "battles": len(battles)}
    decided = battles.outcome != 0.5
    if router.models:  # a model seen only in held-out prompts cannot be predicted
        known = np.isin(np.arange(len(battles.models)),
                        [i for i, m in enumerate(battles.models) if m in router.models])
        decided &= known[battles.model_a] & known[battles.model_b]
    if decided.any():
        sub = _select_rows(battles, decided)
        p = np.clip(predict_battles(router, sub), 1e-6, 1 - 1e-6)
        y, w = sub.outcome.astype(np.float64), sub.weight.astype(np.float64)
        metrics["non_tie_battles"] = int(decided.sum())
        metrics["log_loss"] = round(float(
            -(w * (y * np.log(p) + (1 - y) * np.log(1 - p))).sum() / w.sum()), 5)
        metrics["accuracy"] = round(float((w * ((p > 0.5) == (y > 0.5))).sum() / w.sum()), 5)
    strong, weak = router.default_pair
    prompts, gains = pair_gains(battles, strong, weak)
    if len(prompts):
        rates = router.win_rate([battles.prompts[i] for i in prompts], strong, weak)
        score = apgr(rates, gains)
        metrics["apgr"] = {"pair": [strong, weak], "prompts": len(prompts),
                           "value": None if score is None else round(score, 5)}
    return metrics


def _select_rows(battles: Battles, rows: np.ndarray) -> Battles:
    return Battles(battles.prompts, battles.models, battles.prompt_idx[rows],
                   battles.model_a[rows], battles.model_b[rows], battles.outcome[rows],
                   battles.weight[rows])


# ---- training ----------------------------------------------------------------------------------
def split_by_prompt(battles: Battles, val_fraction: float, seed: int
                    ) -> tuple[Battles, Battles | None]:
    """(training, validation) battles; validation None when `val_fraction` is 0."""
    if not 0.0 <= val_fraction < 1.0:
        raise SwitchLLMError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    n = len(battles.prompts)
    n_val = int(round(val_fraction * n))
    if n_val == 0:
        return battles, None
    if n_val >= n:
        raise DataError(f"only {n} prompts: too few to hold out {val_fraction:.0%}")
    held_out = np.zeros(n, dtype=bool)
    held_out[np.random.default_rng(seed).permutation(n)[:n_val]] = True
    return battles.select_prompts(~held_out), battles.select_prompts(held_out)


def choose_default_pair(battles: Battles, strong: str | None = None,
                        weak: str | None = None) -> tuple[str, str]:
    """The pair `win_rate` answers for by default: the one given, else RouteLLM's
    (gpt-4-1106-preview, Mixtral-8x7B) when both are in the data, else the models with the
    best and worst mean result."""
    for name in (strong, weak):
        if name is not None and name not in battles.models:
            raise DataError(f"model {name!r} is not in the training data; it has: "
                            f"{', '.join(battles.models)}")
    if strong and weak:
        return strong, weak
    if not strong and not weak and {DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL} <= set(
            battles.models):
        return DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL
    n = len(battles.models)
    results = (np.bincount(battles.model_a, battles.outcome, n)
               + np.bincount(battles.model_b, 1.0 - battles.outcome, n))
    counts = np.bincount(battles.model_a, minlength=n) + np.bincount(battles.model_b,
                                                                      minlength=n)
    mean = np.where(counts > 0, results / np.maximum(counts, 1), np.nan)
    ranked = [battles.models[i] for i in np.argsort(-np.nan_to_num(mean, nan=-1.0))]
    strong = strong or next(m for m in ranked if m != weak)
    weak = weak or next(m for m in reversed(ranked) if m != strong)
    return strong, weak


def parse_params(kind: str, items: Sequence[str]) -> dict[str, Any]:
    """`key=value` strings -> keyword arguments typed like the router's defaults."""
    cls = router_class(kind)
    signature = inspect.signature(cls.__init__)
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or key not in cls.params:
            raise SwitchLLMError(
                f"bad --param {item!r}: use key=value with key one of {', '.join(cls.params)}")
        default = signature.parameters[key].default
        try:
            if isinstance(default, bool):
                if text.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(text)
                value: Any = text.lower() in ("true", "1")
            elif isinstance(default, int):
                value = int(text)
            elif isinstance(default, float):
                value = float(text)
            elif isinstance(default, str):
                value = text
            else:
                value = json.loads(text)
        except (ValueError, json.JSONDecodeError):
            raise SwitchLLMError(f"bad --param {item!r}: {text!r} is not a valid "
                                 f"{type(default).__name__}") from None
        out[key] = value
    return out


def build_router(kind: str, params: dict[str, Any] | None = None,
                 embedding_model: str | None = None) -> Router:
    cls = router_class(kind)
    kwargs = dict(params or {})
    if embedding_model:
        if "embedding_model" not in inspect.signature(cls.__init__).parameters:
            raise SwitchLLMError(f"the {kind} router does not use an embedding model")
        kwargs["embedding_model"] = embedding_model
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise SwitchLLMError(f"bad {kind} parameters: {exc}") from exc


def train_router(
    kind: str, battles: Battles, output: str | Path, *, val_fraction: float = 0.1,
    seed: int = 0, params: dict[str, Any] | None = None, embedding_model: str | None = None,
    strong_model: str | None = None, weak_model: str | None = None,
    data_files: Sequence[dict[str, Any]] = (), progress: bool = True,
    share_shipped_embeddings: bool = False, provenance: dict[str, Any] | None = None,
    extend_training: Callable[[Battles], Battles] | None = None,
) -> TrainResult:
    """Fit a `kind` router on `battles` and write its card to `output`. `extend_training`
    adds to the training split only (e.g. the shipped sets), so validation stays on `battles`."""
    from tqdm import tqdm

    router = build_router(kind, params, embedding_model)
    train, val = split_by_prompt(battles, val_fraction, seed)
    if extend_training is not None:
        train = extend_training(train)
    started = time.perf_counter()
    stages = tqdm(total=3, desc=f"train {kind}", unit="stage", disable=None if progress else True)
    stages.set_postfix_str("fit")
    router.fit(train, progress=progress)
    router.default_pair = choose_default_pair(battles, strong_model, weak_model)
    stages.update(1)
    stages.set_postfix_str("validate")
    metrics = validation_metrics(router, val) if val is not None else {}
    stages.update(1)
    stages.set_postfix_str("calibrate")
    use_val = val is not None and len(val.prompts) >= MIN_VALIDATION_CALIBRATION
    pool = val.prompts if use_val else train.prompts
    rng = np.random.default_rng(seed)
    if len(pool) > MAX_CALIBRATION_PROMPTS:
        pool = [pool[i] for i in sorted(rng.choice(len(pool), MAX_CALIBRATION_PROMPTS,
                                                   replace=False))]
    router.calibrate(pool)
    router.card_info["calibration"]["source"] = "validation" if use_val else "training"
    if scores_router(router):  # scores -> P(win), for choosing among N models
        held_out = val if val is not None and len(val) else train
        router.card_info["quality_calibration"] = fit_quality_calibration(router, held_out)
        router.card_info["quality_calibration"]["source"] = (
            "validation" if held_out is val else "training")
    stages.update(1)
    stages.close()
    router.card_info.update({
        "fingerprint": battles.fingerprint(),
        "training": {
            "data_files": list(data_files),
            "prompts": len(battles.prompts), "battles": len(battles),
            "models": len(battles.models),
            "train_prompts": len(train.prompts), "train_battles": len(train),
            "val_fraction": val_fraction, "seed": seed,
            "seconds": round(time.perf_counter() - started, 2),
            **(provenance or {}),  # shipped sets and prompt digests (in-sample marking)
        },
        "validation": metrics,
    })
    if share_shipped_embeddings:  # shipped defaults: refer to the package's prompt vectors
        router.share_shipped_embeddings = True
    path = router.save(output)
    return TrainResult(router, path, metrics)
