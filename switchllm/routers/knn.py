"""k-nearest-neighbour router: the strong win rate is what happened on the most similar
training prompts.

For a query, the `k` training prompts with the highest cosine similarity are found (one matrix
multiply for a whole batch). Each neighbour j gives a value v_j:
- the observed result of strong against weak on that prompt (wins / battles, ties half) if that
  pair met there;
- otherwise 0.5 + (score_strong - score_weak) / 2, where a model's score on the prompt is its
  mean result against every model it met there (both must have met someone there);
- otherwise nothing (the neighbour is skipped).
Neighbours are weighted by a softmax of similarity / `temperature`, scaled to sum to k, and the
average is smoothed toward the pair's global win rate p0 with `smoothing` pseudo-neighbours:
    win rate = (sum_j w_j v_j + smoothing * p0) / (sum_j w_j + smoothing).
p0 is the pair's observed rate over all training battles, or, if the two never met, the
Bradley-Terry estimate from all battles.

By default similarity also counts prompt text features (`text_features=0.1`, see
`EmbeddingRouter`): a neighbour of the same topic but a very different length or amount of
numbers counts less. 5-fold CV APGR (GPT-4 vs Mixtral): GSM8K 0.613 -> 0.639, MMLU 0.673 ->
0.681; held-out MT-Bench did not drop (0.60 -> 0.62). Larger weights help CV more (0.25: GSM8K
0.647, MMLU 0.685) but hurt MT-Bench when trained on the mixed shipped sets.
"""

from __future__ import annotations

import numpy as np

from switchllm.routers.embedding_router import PromptMemoryRouter, bradley_terry


class KNNRouter(PromptMemoryRouter):
    kind = "knn"
    params = ("k", "temperature", "smoothing", "batch_size", "text_features")

    def __init__(self, k: int = 256, temperature: float = 0.15, smoothing: float = 2.0,
                 batch_size: int = 256, embedding_model: str | None = None,
                 text_features: float = 0.1) -> None:
        super().__init__(embedding_model, text_features)
        self.k = int(k)  # neighbours per query
        self.temperature = float(temperature)  # similarity softmax; large = plain average
        self.smoothing = float(smoothing)  # pseudo-neighbours at the global win rate
        self.batch_size = int(batch_size)
        if self.k < 1 or self.temperature <= 0 or self.smoothing < 0:
            raise ValueError("knn needs k >= 1, temperature > 0 and smoothing >= 0")
        self._global_ratings = np.zeros(0)
        self._model_rate = np.zeros((0, 0))  # (prompts, models) mean result, NaN = no battle
        # (prompts, models) measured quality (e.g. RouterBench's correct / wrong), NaN = not
        # measured; set by `remember_quality`. Absent, model scores are mean battle results.
        self._quality_memory: np.ndarray | None = None

    def _prepare(self) -> None:
        self._pair_cache: dict[tuple[int, int], tuple[np.ndarray, float]] = {}
        outcomes = self._outcomes
        assert outcomes is not None
        starts = outcomes.pair_start[:-1]
        wins = np.add.reduceat(outcomes.row_wins.astype(np.float64), starts)
        counts = np.add.reduceat(outcomes.row_counts.astype(np.float64), starts)
        self._global_ratings = bradley_terry(wins[None], counts[None], outcomes.incidence)[0]
        model_wins, model_counts = outcomes.model_outcomes(len(self._prompt_vectors))
        with np.errstate(invalid="ignore", divide="ignore"):
            self._model_rate = np.where(model_counts > 0, model_wins / model_counts, np.nan)
        total = model_counts.sum(axis=0)
        self._global_model_rate = np.where(
            total > 0, model_wins.sum(axis=0) / np.maximum(total, 1e-12), 0.5)

    # ---- neighbours ----------------------------------------------------------------------------
    def _neighbours(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(indices, weights) of the k nearest training prompts; weights sum to k per row."""
        sims = self.memory_similarity(queries)
        k = min(self.k, sims.shape[1])
        idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        top = np.take_along_axis(sims, idx, axis=1)
        logits = (top - top.max(axis=1, keepdims=True)) / self.temperature
        weights = np.exp(logits)
        weights *= k / weights.sum(axis=1, keepdims=True)
        return idx, weights

    def _pair_values(self, strong: int, weak: int) -> tuple[np.ndarray, float]:
        """Per training prompt, the value a neighbour contributes (NaN: none), and p0."""
        cached = self._pair_cache.get((strong, weak))
        if cached is None:
            cached = self._pair_cache[(strong, weak)] = self._compute_pair_values(strong, weak)
        return cached

    def _compute_pair_values(self, strong: int, weak: int) -> tuple[np.ndarray, float]:
        assert self._outcomes is not None
        prompts, wins, counts = self._outcomes.pair_rows(strong, weak)
        estimate = 0.5 + 0.5 * (self._model_rate[:, strong] - self._model_rate[:, weak])
        values = estimate.copy()
        values[prompts] = wins / np.maximum(counts, 1e-12)
        if counts.sum() > 0:
            prior = float(wins.sum() / counts.sum())
        else:
            diff = self._global_ratings[strong] - self._global_ratings[weak]
            prior = float(1.0 / (1.0 + np.exp(-diff)))
        return values, prior

    def _win_rate(self, embeddings: np.ndarray, strong: int, weak: int) -> np.ndarray:
        values, prior = self._pair_values(strong, weak)
        out = np.empty(len(embeddings))
        for start in range(0, len(embeddings), self.batch_size):
            idx, weights = self._neighbours(embeddings[start:start + self.batch_size])
            v = values[idx]
            known = ~np.isnan(v)
            weights = weights * known
            total = (weights * np.where(known, v, 0.0)).sum(axis=1)
            out[start:start + len(idx)] = (
                (total + self.smoothing * prior) / (weights.sum(axis=1) + self.smoothing))
        return out

    def remember_quality(self, quality: np.ndarray) -> None:
        """Score models by their measured quality on the neighbours instead of their battle
        results: `quality` is (training prompts, models) in [0, 1], rows in the order of the
        battles' prompts the router was fitted on, NaN where not measured. With absolute
        labels (RouterBench, LLMRouter) this is P(the model is right) on similar prompts;
        battle results only say how a model did against the others there, so on a prompt every
        model gets right they all look average. Chosen on RouterBench's validation split
        (docs/RESULTS.md)."""
        quality = np.asarray(quality, dtype=np.float64)
        if quality.shape != self._model_rate.shape:
            raise ValueError(f"quality has shape {quality.shape}, the router remembers "
                             f"{self._model_rate.shape} (prompts, models)")
        if np.nanmin(quality) < 0 or np.nanmax(quality) > 1:
            raise ValueError("quality must lie in [0, 1]")
        self._quality_memory = quality

    def _model_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per model, its smoothed mean result on the neighbours (0..1): measured quality when
        the router remembers it (`remember_quality`), else the mean battle result."""
        memory = self._model_rate if self._quality_memory is None else self._quality_memory
        prior = (self._global_model_rate if self._quality_memory is None
                 else np.nan_to_num(np.nanmean(memory, axis=0), nan=0.5))
        out = np.empty((len(embeddings), len(self.models)))
        for start in range(0, len(embeddings), self.batch_size):
            idx, weights = self._neighbours(embeddings[start:start + self.batch_size])
            rates = memory[idx]  # (Q, k, M)
            known = ~np.isnan(rates)
            w = weights[..., None] * known
            total = (w * np.where(known, rates, 0.0)).sum(axis=1)
            out[start:start + len(idx)] = (
                (total + self.smoothing * prior) / (w.sum(axis=1) + self.smoothing))
        return out

    def _get_state(self) -> dict[str, np.ndarray]:
        state = super()._get_state()
        if self._quality_memory is not None:
            state["quality_memory"] = self._quality_memory.astype(np.float32)
        return state

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        super()._set_state(tensors)
        memory = tensors.get("quality_memory")
        self._quality_memory = None if memory is None else memory.astype(np.float64)
