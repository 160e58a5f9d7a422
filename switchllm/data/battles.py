"""Pairwise battles: the one training-data shape every router learns from.

Every input format (battles, per-model scores, golden labels, the shipped benchmarks) becomes
`Battles`; `Battles.from_scores` is the single place where scores turn into comparisons.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from switchllm.errors import DataError

A_WINS, TIE, B_WINS = 1.0, 0.5, 0.0


@dataclass(frozen=True)
class Battles:
    """`prompts[prompt_idx[i]]` was answered by `models[model_a[i]]` and `models[model_b[i]]`;
    `outcome[i]` is 1.0 if a won, 0.0 if b won, 0.5 for a tie. `weight[i]` scales its loss."""

    prompts: list[str]
    models: list[str]
    prompt_idx: np.ndarray
    model_a: np.ndarray
    model_b: np.ndarray
    outcome: np.ndarray
    weight: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        n = len(self.prompt_idx)
        if self.weight is None:
            object.__setattr__(self, "weight", np.ones(n, dtype=np.float32))
        for name in ("model_a", "model_b", "outcome", "weight"):
            if len(getattr(self, name)) != n:
                raise ValueError(f"Battles.{name} has {len(getattr(self, name))} rows, not {n}")

    def __len__(self) -> int:
        return len(self.prompt_idx)

    @classmethod
    def from_records(
        cls,
        records: Sequence[tuple[str, str, str, float]],
        models: Sequence[str] | None = None,
    ) -> Battles:
        """From (prompt, model_a, model_b, outcome) tuples."""
        prompt_index: dict[str, int] = {}
        model_index: dict[str, int] = {m: i for i, m in enumerate(models or [])}
        rows = np.empty((len(records), 3), dtype=np.int64)
        outcome = np.empty(len(records), dtype=np.float32)
        for i, (prompt, a, b, result) in enumerate(records):
            rows[i, 0] = prompt_index.setdefault(prompt, len(prompt_index))
            rows[i, 1] = model_index.setdefault(a, len(model_index))
            rows[i, 2] = model_index.setdefault(b, len(model_index))
            outcome[i] = result
        return cls(list(prompt_index), list(model_index), rows[:, 0], rows[:, 1], rows[:, 2],
                   outcome)

    @classmethod
    def from_scores(
        cls, prompts: Sequence[str], models: Sequence[str], scores: np.ndarray,
        tie_margin: float = 0.0,
    ) -> Battles:
        """Every pair of models scored on the same prompt becomes one battle: the higher score
        wins, scores within `tie_margin` tie. `scores` is (prompts, models); NaN = not scored."""
        scores = np.asarray(scores, dtype=np.float64)
        if scores.shape != (len(prompts), len(models)):
            raise DataError(
                f"scores have shape {scores.shape}, expected ({len(prompts)}, {len(models)})"
            )
        parts: list[tuple[np.ndarray, ...]] = []
        for a in range(len(models)):
            for b in range(a + 1, len(models)):
                both = ~np.isnan(scores[:, a]) & ~np.isnan(scores[:, b])
                idx = np.nonzero(both)[0]
                diff = scores[idx, a] - scores[idx, b]
                result = np.where(diff > tie_margin, A_WINS,
                                  np.where(diff < -tie_margin, B_WINS, TIE))
                parts.append((idx, np.full(len(idx), a), np.full(len(idx), b), result))
        if not parts or sum(len(p[0]) for p in parts) == 0:
            raise DataError("no prompt has scores for two or more models: nothing to compare")
        cat = [np.concatenate([p[i] for p in parts]) for i in range(4)]
        return cls(list(prompts), list(models), cat[0].astype(np.int64),
                   cat[1].astype(np.int64), cat[2].astype(np.int64), cat[3].astype(np.float32))

    def fingerprint(self) -> str:
        """sha256 over prompts, models and battles: identifies the training data on a card."""
        digest = hashlib.sha256()
        for text in (*self.prompts, "\x00", *self.models):
            digest.update(text.encode("utf-8"))
            digest.update(b"\x00")
        for array in (self.prompt_idx, self.model_a, self.model_b, self.outcome, self.weight):
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def select_prompts(self, keep: np.ndarray) -> Battles:
        """The battles on the prompts where `keep` (bool, per prompt) is true, re-indexed."""
        keep = np.asarray(keep, dtype=bool)
        new_index = np.cumsum(keep) - 1
        rows = keep[self.prompt_idx]
        return Battles(
            [p for p, k in zip(self.prompts, keep, strict=True) if k], self.models,
            new_index[self.prompt_idx[rows]], self.model_a[rows], self.model_b[rows],
            self.outcome[rows], self.weight[rows],
        )

    def emphasize_pair(self, strong: str, weak: str, share: float = 0.5) -> Battles:
        """The same battles, re-weighted so those between `strong` and `weak` carry `share` of
        the total weight. Many-model data otherwise drowns the pair a router mostly serves."""
        if not 0.0 < share < 1.0:
            raise ValueError(f"share must be in (0, 1), got {share}")
        if strong not in self.models or weak not in self.models:
            raise DataError(f"no battles between {strong!r} and {weak!r}: unknown model")
        s, w = self.models.index(strong), self.models.index(weak)
        a, b = self.model_a, self.model_b
        pair = ((a == s) & (b == w)) | ((a == w) & (b == s))
        pair_weight, other_weight = self.weight[pair].sum(), self.weight[~pair].sum()
        if pair_weight == 0:
            raise DataError(f"no battles between {strong!r} and {weak!r}")
        if other_weight == 0:
            return self
        scale = share / (1.0 - share) * other_weight / pair_weight
        weight = np.where(pair, self.weight * scale, self.weight).astype(np.float32)
        return Battles(self.prompts, self.models, self.prompt_idx, self.model_a, self.model_b,
                       self.outcome, weight)

    def concat(self, other: Battles) -> Battles:
        """Both sets of battles over the union of prompts and models."""
        models = list(dict.fromkeys([*self.models, *other.models]))
        model_pos = {m: i for i, m in enumerate(models)}
        prompts = list(dict.fromkeys([*self.prompts, *other.prompts]))
        prompt_pos = {p: i for i, p in enumerate(prompts)}

        def remap(b: Battles) -> tuple[np.ndarray, ...]:
            pmap = np.array([prompt_pos[p] for p in b.prompts], dtype=np.int64)
            mmap = np.array([model_pos[m] for m in b.models], dtype=np.int64)
            return pmap[b.prompt_idx], mmap[b.model_a], mmap[b.model_b]

        p1, a1, b1 = remap(self)
        p2, a2, b2 = remap(other)
        return Battles(prompts, models, np.concatenate([p1, p2]), np.concatenate([a1, a2]),
                       np.concatenate([b1, b2]), np.concatenate([self.outcome, other.outcome]),
                       np.concatenate([self.weight, other.weight]))
