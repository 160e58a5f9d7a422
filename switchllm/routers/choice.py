"""Choosing among N models: predicted quality in real units, expected cost, three objectives.

`ModelChooser(router, models, prices, objective).choose(prompts)` returns, per prompt, the
chosen model, every candidate ranked best first (the fallback order), the predicted quality and
the expected cost of each. The objectives (`Objective`):

- ``max_quality``: the candidate with the highest predicted quality;
- ``willingness_to_pay`` (lambda, quality points per dollar): maximise quality - lambda * cost
  (Martian's and RouterBench's form);
- ``quality_target`` (epsilon): the cheapest candidate whose predicted quality is within
  epsilon of the best candidate's.

Predicted quality: routers that score models (`model_scores`: mf, sw_ranking, knn, bert) have
logit-like scores. `fit_quality_calibration` maps each model's scores, by isotonic regression on
held-out battles, to P(the model wins a battle on the prompt) against the opponents it met in the
data, a number in [0, 1] that can be traded against dollars; `switchllm train` stores it on the
card (``quality_calibration`` in router.json). A card without it uses sigmoid(score - mean score
over the router's models), monotone and in [0, 1] but not calibrated.

Pairwise-only routers (random; a card trained on one pair, i.e. without `model_scores`): with two
candidates the more expensive one's quality is P(it beats the cheaper one) (`win_rate`) and the
cheaper one's is 1 minus that, so every objective reduces to a pair decision. With more than two
candidates the random router gives every candidate a uniform random quality (the random
baseline); any other pairwise router is refused with an error naming it.

Expected cost: input tokens are estimated from the prompt's characters (about 4 characters a
token, no tokeniser: cheap and within ~20% for English) and output tokens from a per-model
estimate (from data or the decision log; `DEFAULT_OUTPUT_TOKENS` otherwise); prices are dollars
per 1M tokens.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from switchllm.errors import SwitchLLMError
from switchllm.routers.base import Router

CHARS_PER_TOKEN = 4.0
DEFAULT_OUTPUT_TOKENS = 256.0
MIN_CALIBRATION_POINTS = 50  # fewer battles for a model than this: use the pooled calibration
MAX_KNOTS = 64
OBJECTIVES = ("max_quality", "willingness_to_pay", "quality_target")


class ChoiceError(SwitchLLMError):
    """A group of models cannot be routed as asked (unknown model, bad objective...)."""


# ---- objectives --------------------------------------------------------------------------
@dataclass(frozen=True)
class Objective:
    kind: str = "max_quality"
    value: float = 0.0  # lambda for willingness_to_pay, epsilon for quality_target

    def __post_init__(self) -> None:
        if self.kind not in OBJECTIVES:
            raise ChoiceError(f"unknown objective {self.kind!r}; known: {', '.join(OBJECTIVES)}")
        if not np.isfinite(self.value) or self.value < 0:
            name = "lambda" if self.kind == "willingness_to_pay" else "epsilon"
            raise ChoiceError(f"{self.kind}: {name} must be a number >= 0, got {self.value}")

    @classmethod
    def parse(cls, spec: Any) -> Objective:
        """From YAML: {willingness_to_pay: 200} / {quality_target: 0.02} / {max_quality: true}
        (or the bare string "max_quality")."""
        if spec is None or spec == "max_quality":
            return cls()
        if isinstance(spec, Objective):
            return spec
        if not isinstance(spec, Mapping) or len(spec) != 1:
            raise ChoiceError(
                "objective must be one of {willingness_to_pay: LAMBDA}, {quality_target: EPS} "
                f"or {{max_quality: true}}, got {spec!r}"
            )
        (kind, value), = spec.items()
        if kind == "max_quality":
            return cls()
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ChoiceError(f"objective {kind}: expected a number, got {value!r}")
        return cls(str(kind), float(value))

    def describe(self) -> str:
        if self.kind == "willingness_to_pay":
            return f"willingness_to_pay={self.value:g}"
        if self.kind == "quality_target":
            return f"quality_target={self.value:g}"
        return "max_quality"


def rank_candidates(quality: np.ndarray, cost: np.ndarray, objective: Objective) -> np.ndarray:
    """(n, k) candidate indices per prompt, best first under `objective`; ties go to the
    cheaper model. Column 0 is the choice, the rest the fallback order."""
    quality = np.asarray(quality, dtype=np.float64)
    cost = np.broadcast_to(np.asarray(cost, dtype=np.float64), quality.shape)
    if objective.kind == "willingness_to_pay":
        primary = quality - objective.value * cost
    elif objective.kind == "quality_target":
        # eligible (within epsilon of the best) first, cheapest first; then the rest by quality
        eligible = quality >= quality.max(axis=1, keepdims=True) - objective.value - 1e-12
        primary = np.where(eligible, 2.0 + 1.0 / (1.0 + cost * 1e6), quality - 2.0)
    else:
        primary = quality
    # lexsort: last key is primary; sort descending by primary, then ascending by cost
    order = np.lexsort((cost, -primary), axis=1)
    return order


# ---- calibration: scores -> P(win) --------------------------------------------------------
def isotonic_knots(x: np.ndarray, y: np.ndarray, w: np.ndarray | None = None
                   ) -> tuple[list[float], list[float]]:
    """Isotonic (non-decreasing) regression of y on x by pool-adjacent-violators, reduced to at
    most MAX_KNOTS (x, y) knots for linear interpolation. y values stay in [min y, max y]."""
    order = np.argsort(x, kind="stable")
    xs, ys = np.asarray(x, float)[order], np.asarray(y, float)[order]
    ws = np.ones_like(xs) if w is None else np.asarray(w, float)[order]
    # blocks: (sum w*y, sum w, sum w*x)
    values: list[float] = []
    weights: list[float] = []
    centres: list[float] = []
    for xi, yi, wi in zip(xs, ys, ws, strict=True):
        values.append(yi)
        weights.append(wi)
        centres.append(xi * wi)
        while len(values) > 1 and values[-2] > values[-1]:
            v, wt, c = values.pop(), weights.pop(), centres.pop()
            total = weights[-1] + wt
            values[-1] = (values[-1] * weights[-1] + v * wt) / total
            centres[-1] += c
            weights[-1] = total
    knots_x = np.array(centres) / np.maximum(np.array(weights), 1e-12)
    knots_y = np.array(values)
    if len(knots_x) > MAX_KNOTS:
        keep = np.unique(np.linspace(0, len(knots_x) - 1, MAX_KNOTS).round().astype(int))
        knots_x, knots_y = knots_x[keep], knots_y[keep]
    return knots_x.round(6).tolist(), np.clip(knots_y, 0.0, 1.0).round(6).tolist()


def platt_fit(x: np.ndarray, y: np.ndarray, l2: float = 1e-3, steps: int = 50
              ) -> tuple[float, float]:
    """Logistic (Platt) calibration y ~ sigmoid(a * z + b) on the standardised score z, by
    Newton's method with a small ridge penalty; returns (a, b) for the raw score x:
    sigmoid(a * x + b). The slope is kept >= 0 so the map stays monotone non-decreasing.
    Two numbers per model: steadier than isotonic steps on a few hundred prompts, and strictly
    increasing, so no plateau makes different models tie."""
    x, y = np.asarray(x, float), np.clip(np.asarray(y, float), 0.0, 1.0)
    mu, sd = float(x.mean()), float(x.std()) or 1.0
    design = np.stack([(x - mu) / sd, np.ones_like(x)], axis=1)
    w = np.zeros(2)
    for _ in range(steps):
        p = 1.0 / (1.0 + np.exp(-design @ w))
        grad = design.T @ (p - y) / len(x) + l2 * w
        hess = (design.T * (p * (1 - p))) @ design / len(x) + l2 * np.eye(2)
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-9:
            break
    slope = max(float(w[0]), 0.0) / sd
    return round(slope, 8), round(float(w[1]) - slope * mu, 8)


def _apply_map(knots: Mapping[str, Any], x: np.ndarray) -> np.ndarray:
    """One model's calibration map: Platt {"a", "b"} or isotonic {"x", "y"} knots."""
    if "a" in knots:
        return 1.0 / (1.0 + np.exp(-(knots["a"] * x + knots["b"])))
    return np.interp(x, knots["x"], knots["y"])


def fit_quality_calibration(router: Router, battles: Any) -> dict[str, Any]:
    """Isotonic maps from each model's `model_scores` to P(win a battle on the prompt), fitted
    on `battles` (held-out ones: the card's validation split). Ties count as half a win.
    Models with fewer than MIN_CALIBRATION_POINTS battles use the map pooled over all models."""
    scores = router.model_scores(battles.prompts)
    column = {m: i for i, m in enumerate(router.models)}
    xs: dict[str, list[np.ndarray]] = {}
    ys: dict[str, list[np.ndarray]] = {}
    for side, sign in ((battles.model_a, 1.0), (battles.model_b, -1.0)):
        for j, model in enumerate(battles.models):
            if model not in column:
                continue
            rows = np.flatnonzero((side == j) & (battles.model_a != battles.model_b))
            if len(rows) == 0:
                continue
            outcome = battles.outcome[rows].astype(float)
            xs.setdefault(model, []).append(scores[battles.prompt_idx[rows], column[model]])
            ys.setdefault(model, []).append(outcome if sign > 0 else 1.0 - outcome)
    if not xs:
        raise ChoiceError("no battles between models the router knows: cannot calibrate")
    all_x = np.concatenate([np.concatenate(v) for v in xs.values()])
    all_y = np.concatenate([np.concatenate(v) for v in ys.values()])
    pooled_x, pooled_y = isotonic_knots(all_x, all_y)
    per_model = {}
    for model in xs:
        x, y = np.concatenate(xs[model]), np.concatenate(ys[model])
        if len(x) >= MIN_CALIBRATION_POINTS:
            kx, ky = isotonic_knots(x, y)
            per_model[model] = {"x": kx, "y": ky, "n": len(x)}
    return {"definition": "P(model wins a battle on the prompt)", "method": "isotonic",
            "pooled": {"x": pooled_x, "y": pooled_y, "n": len(all_x)}, "models": per_model}


def calibrated_quality(router: Router, scores: np.ndarray, models: Sequence[str]) -> np.ndarray:
    """Scores (n, len(models)) of `models` -> predicted quality in [0, 1], monotone per model."""
    calibration = router.card_info.get("quality_calibration")
    out = np.empty_like(scores, dtype=np.float64)
    if not calibration:
        return out  # filled by the caller's fallback
    if calibration.get("method") == "identity":
        return np.clip(np.asarray(scores, dtype=np.float64), 0.0, 1.0)
    for j, model in enumerate(models):
        knots = calibration["models"].get(model) or calibration["pooled"]
        out[:, j] = _apply_map(knots, scores[:, j])
    return np.clip(out, 0.0, 1.0)


def scores_router(router: Router) -> bool:
    """Whether the router scores individual models (`model_scores`)."""
    return bool(router.models) and type(router).model_scores is not Router.model_scores


# ---- the chooser -------------------------------------------------------------------------
@dataclass(frozen=True)
class Choice:
    model: str  # the chosen model
    order: tuple[str, ...]  # every candidate, best first: the fallback order
    quality: dict[str, float]  # predicted quality per candidate
    expected_cost: dict[str, float]  # expected dollars per candidate
    best_model: str  # the group's top model: the baseline a saving is measured against


def estimate_tokens(text: str) -> int:
    """Tokeniser-free token estimate: about CHARS_PER_TOKEN characters a token."""
    return max(1, int(np.ceil(len(text) / CHARS_PER_TOKEN)))


class ModelChooser:
    """Chooses among `models` for each prompt with `router` under `objective`.

    `input_prices`/`output_prices`: dollars per 1M tokens per model; `output_tokens`: expected
    completion tokens per model (DEFAULT_OUTPUT_TOKENS where missing). Raises ChoiceError at
    construction when the router cannot score a candidate."""

    def __init__(self, router: Router, models: Sequence[str],
                 input_prices: Mapping[str, float], output_prices: Mapping[str, float],
                 objective: Objective | None = None,
                 output_tokens: Mapping[str, float] | None = None, seed: int = 0) -> None:
        self.router = router
        self.models = list(models)
        self.objective = objective or Objective()
        if len(self.models) < 2:
            raise ChoiceError(f"a route group needs at least two models, got {self.models}")
        if len(set(self.models)) != len(self.models):
            raise ChoiceError(f"a route group lists a model twice: {self.models}")
        self.input_price = np.array([float(input_prices.get(m, 0.0)) for m in self.models])
        self.output_price = np.array([float(output_prices.get(m, 0.0)) for m in self.models])
        if (self.input_price < 0).any() or (self.output_price < 0).any():
            raise ChoiceError("prices must not be negative")
        self.output_tokens = dict(output_tokens or {})
        self._rng = np.random.default_rng(seed)
        self.mode = self._check_router()
        # What one would send everything to without routing: the priciest candidate (the
        # saving in `switchllm stats` is measured against always using it).
        price = self.input_price + self.output_price
        self.top_model = self.models[int(np.argmax(price))]

    def _check_router(self) -> str:
        name = self.router.kind
        if scores_router(self.router):
            missing = [m for m in self.models if m not in self.router.models]
            if missing:
                raise ChoiceError(
                    f"the {name} router cannot score {', '.join(map(repr, missing))}: it knows "
                    f"{len(self.router.models)} models ({', '.join(self.router.models[:8])}...)"
                )
            self._columns = [self.router.models.index(m) for m in self.models]
            return "scores"
        if len(self.models) == 2:
            if self.router.models:
                missing = [m for m in self.models if m not in self.router.models]
                if missing:
                    raise ChoiceError(f"the {name} router cannot score {missing[0]!r}")
            return "pair"
        if name == "random":
            return "random"
        raise ChoiceError(
            f"the {name} router answers pairs only; a group of {len(self.models)} models needs "
            "a router that scores models (mf, sw_ranking, knn, bert)"
        )

    def expected_costs(self, input_tokens: Sequence[int]) -> np.ndarray:
        """(n, k) expected dollars per prompt and candidate."""
        out_tokens = np.array([float(self.output_tokens.get(m) or DEFAULT_OUTPUT_TOKENS)
                               for m in self.models])
        tokens_in = np.asarray(input_tokens, dtype=np.float64)[:, None]
        return (tokens_in * self.input_price + out_tokens * self.output_price) / 1e6

    def quality(self, prompts: Sequence[str]) -> np.ndarray:
        """(n, k) predicted quality in [0, 1] per prompt and candidate."""
        n = len(prompts)
        if self.mode == "scores":
            scores = np.asarray(self.router.model_scores(prompts), dtype=np.float64)
            mine = scores[:, self._columns]
            if self.router.card_info.get("quality_calibration"):
                return calibrated_quality(self.router, mine, self.models)
            centred = mine - scores.mean(axis=1, keepdims=True)
            return 1.0 / (1.0 + np.exp(-centred))
        if self.mode == "random":
            return self._rng.uniform(0.0, 1.0, size=(n, len(self.models)))
        # pair: the pricier model is the "strong" one
        price = self.input_price + self.output_price
        strong, weak = (0, 1) if price[0] >= price[1] else (1, 0)
        pair = ((self.models[strong], self.models[weak]) if self.router.models
                else (None, None))
        rate = np.asarray(self.router.win_rate(list(prompts), *pair), dtype=np.float64)
        out = np.empty((n, 2))
        out[:, strong], out[:, weak] = rate, 1.0 - rate
        return out

    def choose(self, prompts: Sequence[str],
               input_tokens: Sequence[int] | None = None) -> list[Choice]:
        if input_tokens is None:
            input_tokens = [estimate_tokens(p) for p in prompts]
        if len(prompts) == 0:
            return []
        quality = self.quality(prompts)
        cost = self.expected_costs(input_tokens)
        order = rank_candidates(quality, cost, self.objective)
        choices = []
        for i in range(len(prompts)):
            ranked = tuple(self.models[j] for j in order[i])
            choices.append(Choice(
                model=ranked[0], order=ranked,
                quality={m: float(quality[i, j]) for j, m in enumerate(self.models)},
                expected_cost={m: float(cost[i, j]) for j, m in enumerate(self.models)},
                best_model=self.top_model,
            ))
        return choices


def fit_quality_calibration_from_scores(router: Router, prompts: Sequence[str],
                                        quality: np.ndarray, models: Sequence[str],
                                        method: str = "isotonic",
                                        scores: np.ndarray | None = None) -> dict[str, Any]:
    """Maps from each model's `model_scores` to its expected quality (P(answer is correct)
    for 0/1 quality, the expected normalised score otherwise), fitted on held-out `prompts`
    whose measured quality per model (n, len(models), in [0, 1], NaN: not measured) is known,
    as in RouterBench. `method`: "isotonic" (knots), "platt" (sigmoid(a * score + b) per
    model) or "identity" (the scores already are expected quality in [0, 1]). `scores`: the
    router's `model_scores(prompts)`, when already computed."""
    if method == "identity":  # scores already are expected quality (knn's measured quality)
        return {"definition": "expected quality (measured score) of the model's answer",
                "method": "identity", "pooled": {}, "models": {}}
    if method not in ("isotonic", "platt"):
        raise ChoiceError(f"unknown calibration method {method!r}: isotonic, platt or "
                          "identity")
    fit_map = (isotonic_knots if method == "isotonic" else
               lambda x, y: dict(zip("ab", platt_fit(x, y), strict=True)))
    if scores is None:
        scores = router.model_scores(prompts)
    per_model, xs, ys = {}, [], []
    for j, model in enumerate(models):
        if model not in router.models:
            continue
        x = scores[:, router.models.index(model)]
        y = np.asarray(quality[:, j], dtype=float)
        keep = np.isfinite(y)
        xs.append(x[keep])
        ys.append(y[keep])
        if keep.sum() >= MIN_CALIBRATION_POINTS:
            per_model[model] = {**_as_map(fit_map(x[keep], y[keep])), "n": int(keep.sum())}
    if not xs:
        raise ChoiceError("none of the models is known to the router: cannot calibrate")
    pooled = _as_map(fit_map(np.concatenate(xs), np.concatenate(ys)))
    return {"definition": "expected quality (measured score) of the model's answer",
            "method": method, "pooled": {**pooled, "n": int(sum(map(len, xs)))},
            "models": per_model}


def _as_map(fitted: Any) -> dict[str, Any]:
    """isotonic_knots' (x, y) or Platt's {"a", "b"} as a calibration map dict."""
    if isinstance(fitted, dict):
        return fitted
    return {"x": fitted[0], "y": fitted[1]}
