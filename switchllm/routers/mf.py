"""Matrix-factorisation router, after RouteLLM (Ong et al., 2025, section 4.1).

Every model m has a learned vector v_m; a prompt embedding e_q is projected to the same space.
A model's quality on the prompt is

    delta(m, q) = w2 . (v_m * (W1^T e_q + b))

and P(a beats b | q) = sigmoid(delta(a, q) - delta(b, q)). Trained over all models in the data
at once with Adam and weight decay on binary cross-entropy (a tie is a 0.5 target), each battle
weighted by its weight, on precomputed prompt embeddings (each unique prompt embedded once).
Works for any pair of models in the training data; `model_scores` is delta per model.
Inference is two small matrix products in numpy.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from switchllm.routers.embedding_router import EmbeddingRouter, require

if TYPE_CHECKING:
    from switchllm.data.battles import Battles


class MFRouter(EmbeddingRouter):
    kind = "mf"
    params = ("dim", "epochs", "batch_size", "lr", "weight_decay", "noise", "seed",
              "text_features")
    scores_are_logits = True

    def __init__(self, dim: int = 64, epochs: int = 30, batch_size: int = 256,
                 lr: float = 1e-3, weight_decay: float = 1e-4, noise: float = 0.05,
                 seed: int = 0, embedding_model: str | None = None,
                 text_features: float = 0.0) -> None:
        super().__init__(embedding_model, text_features)
        self.dim = int(dim)  # latent size of v_m and the projected prompt
        self.epochs = int(epochs)  # passes over the battles
        self.batch_size = int(batch_size)
        self.lr = float(lr)  # Adam learning rate
        self.weight_decay = float(weight_decay)  # AdamW decoupled weight decay
        self.noise = float(noise)  # std of Gaussian noise added to prompt embeddings (training)
        self.seed = int(seed)
        if self.dim < 1 or self.epochs < 1 or self.batch_size < 1:
            raise ValueError("mf needs dim, epochs and batch_size >= 1")
        self._w1 = np.zeros((0, 0), dtype=np.float32)  # (embedding dim, dim)
        self._b = np.zeros(0, dtype=np.float32)  # (dim,)
        self._v = np.zeros((0, 0), dtype=np.float32)  # (models, dim)
        self._w2 = np.zeros(0, dtype=np.float32)  # (dim,)

    def _fit_embeddings(self, battles: Battles, embeddings: np.ndarray,
                        progress: bool = False) -> None:
        import torch

        # The model is tiny: one thread is many times faster than several fighting over
        # busy cores (measured 7 ms vs 150 ms per step on 2 shared cores).
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            self._train(battles, embeddings, progress)
        finally:
            torch.set_num_threads(threads)

    def _train(self, battles: Battles, embeddings: np.ndarray, progress: bool) -> None:
        import torch
        from tqdm import tqdm

        generator = torch.Generator().manual_seed(self.seed)
        torch.manual_seed(self.seed)
        n_models, emb_dim = len(battles.models), embeddings.shape[1]
        prompt_vectors = torch.from_numpy(np.ascontiguousarray(embeddings, dtype=np.float32))
        proj = torch.nn.Linear(emb_dim, self.dim)
        model_vectors = torch.nn.Embedding(n_models, self.dim)
        torch.nn.init.normal_(model_vectors.weight, std=1.0 / np.sqrt(self.dim))
        head = torch.nn.Linear(self.dim, 1, bias=False)
        parameters = [*proj.parameters(), *model_vectors.parameters(), *head.parameters()]
        optimizer = torch.optim.AdamW(parameters, lr=self.lr, weight_decay=self.weight_decay)

        keep = battles.model_a != battles.model_b
        prompt = torch.from_numpy(battles.prompt_idx[keep])
        model_a = torch.from_numpy(battles.model_a[keep])
        model_b = torch.from_numpy(battles.model_b[keep])
        target = torch.from_numpy(battles.outcome[keep].astype(np.float32))
        weight = torch.from_numpy(battles.weight[keep].astype(np.float32))
        n = len(prompt)

        def delta(vectors: torch.Tensor, models: torch.Tensor) -> torch.Tensor:
            return head(model_vectors(models) * proj(vectors)).squeeze(-1)

        steps = self.epochs * max(1, -(-n // self.batch_size))
        bar = tqdm(total=steps, desc="training mf", unit="step", disable=None if progress else True)
        for _ in range(self.epochs):
            order = torch.randperm(n, generator=generator)
            for start in range(0, n, self.batch_size):
                batch = order[start:start + self.batch_size]
                vectors = prompt_vectors[prompt[batch]]
                if self.noise > 0:
                    vectors = vectors + self.noise * torch.randn(
                        vectors.shape, generator=generator)
                logits = delta(vectors, model_a[batch]) - delta(vectors, model_b[batch])
                loss = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, target[batch], weight=weight[batch], reduction="sum"
                ) / weight[batch].sum().clamp_min(1e-12)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4f}")
        bar.close()
        with torch.no_grad():
            self._w1 = proj.weight.T.contiguous().numpy().copy()
            self._b = proj.bias.numpy().copy()
            self._v = model_vectors.weight.numpy().copy()
            self._w2 = head.weight[0].numpy().copy()

    def _model_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """delta(m, q) for every model m: (n, models)."""
        return (embeddings @ self._w1 + self._b) @ (self._v * self._w2).T

    def _win_rate(self, embeddings: np.ndarray, strong: int, weak: int) -> np.ndarray:
        # only the two rows of the model table that matter
        pair = (self._v[[strong, weak]] * self._w2).T  # (dim, 2)
        deltas = (embeddings @ self._w1 + self._b) @ pair
        return 1.0 / (1.0 + np.exp(-(deltas[:, 0] - deltas[:, 1]).astype(np.float64)))

    def _get_state(self) -> dict[str, np.ndarray]:
        return {**super()._get_state(), "w1": self._w1, "b": self._b, "v": self._v,
                "w2": self._w2}

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        super()._set_state(tensors)
        w1, b, v, w2 = require(tensors, self.kind, "w1", "b", "v", "w2")
        self._w1, self._b, self._v, self._w2 = (np.asarray(t, dtype=np.float32)
                                                for t in (w1, b, v, w2))
