"""Similarity-weighted (SW) ranking router, after RouteLLM (Ong et al., 2025, section 4.1).

For a query prompt q, every training battle on prompt p gets the weight
gamma^(1 + s(q, p) / max_p' s(q, p')), s the cosine similarity of the prompt embeddings, and a
Bradley-Terry model over all models is fitted to the weighted battles; the strong win rate is
sigmoid(r_strong - r_weak). Battles on prompts like the query count most.

Fitting a Bradley-Terry model per query is vectorised: battles are summed per (prompt, model
pair) once at training time, so for a batch of Q queries the weighted statistics are one
(Q, prompts) similarity matrix gathered onto those sums, and all Q ratings are solved together
by a few batched Newton steps (`bradley_terry`). Nothing is fitted per query in a Python loop.
"""

from __future__ import annotations

import numpy as np

from switchllm.routers.embedding_router import PromptMemoryRouter, bradley_terry

# prompts x model pairs up to which the per-pair sums are kept as dense matrices (2 x 4 bytes)
DENSE_LIMIT = 5_000_000


class SWRankingRouter(PromptMemoryRouter):
    kind = "sw_ranking"
    params = ("gamma", "reg", "n_iter", "batch_size", "text_features")
    scores_are_logits = True

    def __init__(self, gamma: float = 1000.0, reg: float = 1.0, n_iter: int = 6,
                 batch_size: int = 128, embedding_model: str | None = None,
                 text_features: float = 0.0) -> None:
        super().__init__(embedding_model, text_features)
        self.gamma = float(gamma)  # weight contrast: most similar prompt counts gamma x the least
        self.reg = float(reg)  # L2 prior on ratings, in (weighted) battles
        self.n_iter = int(n_iter)  # Newton steps per batch
        self.batch_size = int(batch_size)  # queries solved together (memory: batch x rows)
        if self.gamma <= 1.0:
            raise ValueError(f"gamma must be > 1, got {gamma}")
        self._dense: tuple[np.ndarray, np.ndarray] | None = None

    def _prepare(self) -> None:
        """Dense (prompts, pairs) win/battle matrices when small enough: the weighted sums are
        then one BLAS matrix product; otherwise the sparse rows are gathered."""
        outcomes = self._outcomes
        assert outcomes is not None
        n_prompts = len(self._prompt_vectors)
        self._dense = None
        if n_prompts * outcomes.n_pairs <= DENSE_LIMIT:
            wins = np.zeros((n_prompts, outcomes.n_pairs), dtype=np.float32)
            counts = np.zeros_like(wins)
            wins[outcomes.row_prompt, outcomes.row_pair] = outcomes.row_wins
            counts[outcomes.row_prompt, outcomes.row_pair] = outcomes.row_counts
            self._dense = (wins, counts)

    def ratings_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-query Bradley-Terry ratings (n, models), natural-log (logit) scale."""
        embeddings = self.check_embeddings(embeddings)
        out = np.zeros((len(embeddings), len(self.models)))
        for start in range(0, len(embeddings), self.batch_size):
            out[start:start + self.batch_size] = self._ratings(
                embeddings[start:start + self.batch_size])
        return out

    def _ratings(self, queries: np.ndarray) -> np.ndarray:
        outcomes = self._outcomes
        assert outcomes is not None
        sims = self.memory_similarity(queries)  # (Q, prompts)
        max_sim = np.maximum(sims.max(axis=1, keepdims=True), 1e-6)
        # gamma^(1 + s/max_s), shifted by the row maximum for numerical range (the scale
        # cancels in the normalisation below)
        prompt_weights = np.exp(np.log(self.gamma) * (sims / max_sim - 1.0))  # (Q, prompts)
        if self._dense is not None:
            wins = prompt_weights @ self._dense[0]
            counts = prompt_weights @ self._dense[1]
        else:
            weights = prompt_weights[:, outcomes.row_prompt]  # (Q, rows)
            starts = outcomes.pair_start[:-1]
            counts = np.add.reduceat(weights * outcomes.row_counts, starts, axis=1)
            wins = np.add.reduceat(weights * outcomes.row_wins, starts, axis=1)
        # mean weight 1: `reg` then means the same number of battles whatever gamma is
        scale = outcomes.row_counts.sum() / np.maximum(counts.sum(axis=1, keepdims=True), 1e-12)
        return bradley_terry(wins * scale, counts * scale, outcomes.incidence, self.reg,
                             self.n_iter)

    def _win_rate(self, embeddings: np.ndarray, strong: int, weak: int) -> np.ndarray:
        ratings = self.ratings_from_embeddings(embeddings)
        return 1.0 / (1.0 + np.exp(-(ratings[:, strong] - ratings[:, weak])))

    def _model_scores(self, embeddings: np.ndarray) -> np.ndarray:
        return self.ratings_from_embeddings(embeddings)
