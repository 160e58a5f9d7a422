"""The bert router: a fine-tuned transformer encoder that scores every known model per prompt.

RouteLLM's BERT classifier predicts, for one fixed pair, whether the strong model wins. This one
conditions on the pair instead, so one router serves any pair of the models it was trained on:

    pooled = mean-pool(encoder(prompt))            # all-MiniLM-L6-v2 by default
    s = head(pooled)                               # one quality logit per known model
    P(a beats b | prompt) = sigmoid(s_a - s_b)

trained with binary cross-entropy on every battle (ties are 0.5 targets, battles weighted). Each
training step encodes a batch of unique prompts once; all battles on those prompts share the
encoding. Only the top `train_layers` encoder layers and the head are trained, so training fits a
CPU, and the router card stores only those tensors (float16) plus the base model's name and
fingerprint: loading rebuilds the base from the package (or the recorded local directory) and
refuses a base whose configuration or weights differ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from switchllm.errors import DataError, SwitchLLMError
from switchllm.routers import torch_utils as tu
from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL, Router
from switchllm.routers.frozen_cache import FrozenCache
from switchllm.routers.score_cache import ScoreCache

if TYPE_CHECKING:
    import torch

    from switchllm.data.battles import Battles

INFERENCE_BATCH = 64
ENCODER_PREFIX = "encoder."
HEAD_PREFIX = "head."


class BertRouter(Router):
    kind = "bert"
    params: ClassVar[tuple[str, ...]] = (
        "base_model", "train_layers", "epochs", "lr", "head_lr", "batch_size", "max_length",
        "weight_decay", "dropout", "seed", "device",
    )
    #: win_rate(q, a, b) == sigmoid(score_a - score_b): one scoring pass answers every pair
    scores_are_logits: ClassVar[bool] = True

    def __init__(
        self,
        base_model: str = tu.BUNDLED_ENCODER,
        train_layers: int = 2,
        epochs: int = 1,
        lr: float = 1e-4,
        head_lr: float = 1e-3,
        batch_size: int = 32,
        max_length: int = 256,
        weight_decay: float = 0.01,
        dropout: float = 0.1,
        seed: int = 0,
        device: str | None = None,
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.train_layers = train_layers
        self.epochs = epochs
        self.lr = lr
        self.head_lr = head_lr
        self.batch_size = batch_size
        self.max_length = max_length
        self.weight_decay = weight_decay
        self.dropout = dropout
        self.seed = seed
        self.device = device
        self._encoder: Any = None
        self._tokenizer: Any = None
        self._head: Any = None
        self._device = "cpu"
        self._score_cache: ScoreCache | None | bool = False  # False: not looked up yet

    # ---- model construction -------------------------------------------------------------------
    def _load_base(self) -> dict[str, str]:
        """Load the base encoder and tokenizer; returns the base record for the card."""
        directory = tu.resolve_base_dir(self.base_model)
        self._device = tu.pick_device(self.device)
        self._tokenizer = tu.load_tokenizer(directory)
        self._encoder = tu.load_model(directory, "AutoModel", "float32").to(self._device)
        self._encoder.eval()
        return tu.base_record(self.base_model, directory, self._encoder)

    def _build_head(self, n_models: int) -> None:
        import torch

        hidden = self._encoder.config.hidden_size
        self._head = torch.nn.Linear(hidden, n_models).to(self._device)

    def _trainable_encoder_params(self) -> dict[str, torch.nn.Parameter]:
        return tu.top_layer_parameters(self._encoder, self.train_layers)

    def _head_params(self) -> dict[str, torch.nn.Parameter]:
        return dict(self._head.named_parameters())

    # ---- encoding -----------------------------------------------------------------------------
    def _tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        if self.max_length < 8:
            raise SwitchLLMError(f"max_length must be at least 8 tokens, got {self.max_length}")
        encoded = self._tokenizer(
            list(prompts), truncation=True, max_length=self.max_length, padding=False
        )
        return encoded["input_ids"]

    def _pooled_scores(
        self, hidden: torch.Tensor, mask: torch.Tensor, train: bool
    ) -> torch.Tensor:
        """(batch, n_models) quality logits from the encoder's last hidden state."""
        import torch

        weights = mask.unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        if train and self.dropout > 0:
            pooled = torch.nn.functional.dropout(pooled, p=self.dropout)
        return self._head(pooled)

    def _scores(self, token_ids: Sequence[Sequence[int]], train: bool) -> torch.Tensor:
        """(batch, n_models) quality logits through the whole encoder."""
        ids, mask = tu.pad_batch(token_ids, self._tokenizer.pad_token_id or 0, self._device)
        hidden = self._encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        return self._pooled_scores(hidden, mask, train)

    def _frozen_cache(self, token_ids: Sequence[Sequence[int]], progress: bool) -> FrozenCache:
        """The frozen layers' output for every prompt, computed once (see frozen_cache)."""
        _, layers = tu.transformer_layers(self._encoder)
        return FrozenCache(self._encoder, len(layers) - self.train_layers, token_ids,
                           self._tokenizer.pad_token_id or 0, self._device, progress=progress)

    def _cached_scores(self, cache: FrozenCache, rows: Sequence[int], train: bool
                       ) -> torch.Tensor:
        """(len(rows), n_models) quality logits, running only the trained layers."""
        hidden, mask = cache.last_hidden(rows)
        return self._pooled_scores(hidden, mask, train)

    # ---- training -----------------------------------------------------------------------------
    def fit(self, battles: Battles, progress: bool = True) -> BertRouter:
        import torch

        if len(battles) == 0:
            raise DataError("cannot train the bert router on zero battles")
        if self.epochs < 1 or self.batch_size < 1:
            raise SwitchLLMError("epochs and batch_size must be at least 1")
        started = time.perf_counter()
        tu.seed_torch(self.seed)
        rng = np.random.default_rng(self.seed)

        used_models = np.unique(np.concatenate([battles.model_a, battles.model_b]))
        model_pos = np.full(len(battles.models), -1, dtype=np.int64)
        model_pos[used_models] = np.arange(len(used_models))
        self.models = [battles.models[i] for i in used_models]
        self.default_pair = _choose_default_pair(battles, self.models, model_pos)

        base = self._load_base()
        self._build_head(len(self.models))
        encoder_params = self._trainable_encoder_params()
        tu.freeze_except(self._encoder, encoder_params)

        used_prompts = np.unique(battles.prompt_idx)
        token_ids = self._tokenize([battles.prompts[i] for i in used_prompts])
        prompt_row = np.full(len(battles.prompts), -1, dtype=np.int64)
        prompt_row[used_prompts] = np.arange(len(used_prompts))
        # battles grouped by prompt: rows order[starts[p]:starts[p+1]] belong to prompt p
        rows = prompt_row[battles.prompt_idx]
        order = np.argsort(rows, kind="stable")
        starts = np.searchsorted(rows[order], np.arange(len(used_prompts) + 1))
        a_all = torch.as_tensor(model_pos[battles.model_a])
        b_all = torch.as_tensor(model_pos[battles.model_b])
        y_all = torch.as_tensor(battles.outcome, dtype=torch.float32)
        w_all = torch.as_tensor(battles.weight, dtype=torch.float32)

        groups = [{"params": list(self._head.parameters()), "lr": self.head_lr}]
        if encoder_params:
            groups.append({"params": list(encoder_params.values()), "lr": self.lr})
        optimizer = torch.optim.AdamW(groups, weight_decay=self.weight_decay)
        lengths = np.array([len(t) for t in token_ids])
        steps_per_epoch = -(-len(used_prompts) // self.batch_size)
        scheduler = tu.linear_warmup_decay(optimizer, steps_per_epoch * self.epochs)
        _, layers = tu.transformer_layers(self._encoder)
        trained_layers = list(layers)[len(layers) - self.train_layers:]

        # The frozen layers never change: encode through them once, train on their output.
        cache_started = time.perf_counter()
        cache = self._frozen_cache(token_ids, progress=progress)
        cache.check_replay(np.argsort(lengths)[-min(8, len(lengths)):])
        cache_seconds = time.perf_counter() - cache_started

        epoch_losses: list[float] = []
        bar = tqdm(total=steps_per_epoch * self.epochs, desc="training bert router",
                   unit="step", leave=False, disable=None if progress else True)
        for _ in range(self.epochs):
            for layer in trained_layers:
                layer.train()
            total, weight_sum = 0.0, 0.0
            for batch in _bucketed_batches(lengths, self.batch_size, rng):
                scores = self._cached_scores(cache, batch, train=True)
                local = np.concatenate([np.full(starts[p + 1] - starts[p], j)
                                        for j, p in enumerate(batch)])
                idx = torch.as_tensor(np.concatenate([order[starts[p]:starts[p + 1]]
                                                      for p in batch]))
                local_t = torch.as_tensor(local, device=self._device)
                logits = (scores[local_t, a_all[idx].to(self._device)]
                          - scores[local_t, b_all[idx].to(self._device)])
                w = w_all[idx].to(self._device)
                losses = torch.nn.functional.binary_cross_entropy_with_logits(
                    logits, y_all[idx].to(self._device), reduction="none")
                batch_loss, batch_weight = tu.weighted_step(losses, w, optimizer, scheduler, bar)
                total += batch_loss * batch_weight
                weight_sum += batch_weight
            epoch_losses.append(total / max(weight_sum, 1e-12))
        bar.close()
        self._encoder.eval()
        tu.freeze_except(self._encoder, {})
        tu.round_to_float16_([*encoder_params.values(), *self._head.parameters()])

        self.card_info["base"] = base
        self.card_info["training"] = {
            "data_fingerprint": battles.fingerprint(),
            "n_battles": len(battles),
            "n_prompts": len(used_prompts),
            "epoch_losses": [round(x, 6) for x in epoch_losses],
            "frozen_cache_seconds": round(cache_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
        return self

    # ---- inference ----------------------------------------------------------------------------
    def _require_trained(self) -> None:
        if self._head is None:
            raise SwitchLLMError(
                "the bert router is not trained: call fit(battles) or load a trained card"
            )

    def model_scores(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        self._require_trained()
        prompts = list(prompts)
        out = np.empty((len(prompts), len(self.models)), dtype=np.float32)
        if not prompts:
            return out
        cached = self._cached_prompt_scores()
        todo = np.arange(len(prompts))
        if cached is not None:
            rows, scores = cached.lookup(prompts)
            out[rows] = scores
            todo = np.setdiff1d(todo, rows)
        if not len(todo):
            return out
        token_ids = self._tokenize([prompts[i] for i in todo])
        batches = list(tu.length_sorted_batches([len(t) for t in token_ids], INFERENCE_BATCH))
        with torch.inference_mode():
            # disable=None: no bar when output is not a terminal (a log file)
            for batch in tqdm(batches, desc="scoring prompts", unit="batch", leave=False,
                              disable=None if len(todo) > 4 * INFERENCE_BATCH else True):
                scores = self._scores([token_ids[i] for i in batch], train=False)
                out[todo[batch]] = scores.float().cpu().numpy()
        return out

    def _cached_prompt_scores(self) -> ScoreCache | None:
        """The loaded card's shipped scores of the shipped prompts, if they match its weights."""
        if self._score_cache is False:
            self._score_cache = ScoreCache.for_card(self.card_info.get("path"), self.models)
        return self._score_cache

    def win_rate(
        self, prompts: Sequence[str], strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        self._require_trained()
        strong, weak = self.resolve_pair(strong, weak)
        scores = self.model_scores(prompts).astype(np.float64)
        diff = scores[:, self.models.index(strong)] - scores[:, self.models.index(weak)]
        return 1.0 / (1.0 + np.exp(-diff))

    # ---- persistence --------------------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        self._require_trained()
        state = {ENCODER_PREFIX + name: tu.to_numpy(p)
                 for name, p in self._trainable_encoder_params().items()}
        head = self._head_params().items()
        state.update({HEAD_PREFIX + name: tu.to_numpy(p) for name, p in head})
        return state

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        base = self._load_base()
        tu.verify_base(self.card_info.get("base"), base)
        self._build_head(len(self.models))
        encoder = {k[len(ENCODER_PREFIX):]: v for k, v in tensors.items()
                   if k.startswith(ENCODER_PREFIX)}
        head = {k[len(HEAD_PREFIX):]: v for k, v in tensors.items() if k.startswith(HEAD_PREFIX)}
        if len(encoder) + len(head) != len(tensors):
            raise SwitchLLMError("bert router card holds tensors that are neither encoder nor head")
        tu.load_into_(self._trainable_encoder_params(), encoder, "bert encoder")
        tu.load_into_(self._head_params(), head, "bert head")
        tu.freeze_except(self._encoder, {})
        self._head.eval()


def _bucketed_batches(
    lengths: np.ndarray, batch_size: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """Shuffled batches of prompts of similar length: shuffle, sort each window of 50 batches
    by length, cut into batches, shuffle the batches. Padding (and so the work per step) stays
    small while every epoch still mixes prompts differently."""
    perm = rng.permutation(len(lengths))
    window = batch_size * 50
    batches: list[np.ndarray] = []
    for start in range(0, len(perm), window):
        chunk = perm[start : start + window]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in rng.permutation(len(batches))]


def _choose_default_pair(
    battles: Battles, models: list[str], model_pos: np.ndarray
) -> tuple[str, str]:
    """RouteLLM's pair when both models were trained on; otherwise the most-compared pair, the
    model that won more of their battles as strong."""
    if DEFAULT_STRONG_MODEL in models and DEFAULT_WEAK_MODEL in models:
        return DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL
    if len(models) < 2:
        raise DataError(f"battles involve only one model ({models}); need at least two")
    a = model_pos[battles.model_a]
    b = model_pos[battles.model_b]
    lo, hi = np.minimum(a, b), np.maximum(a, b)
    keys, counts = np.unique(lo * len(models) + hi, return_counts=True)
    best = int(keys[np.argmax(counts)])
    first, second = divmod(best, len(models))
    in_pair = (lo == first) & (hi == second)
    first_wins = np.where(a[in_pair] == first, battles.outcome[in_pair],
                          1.0 - battles.outcome[in_pair]).mean()
    if first_wins >= 0.5:
        return models[first], models[second]
    return models[second], models[first]
