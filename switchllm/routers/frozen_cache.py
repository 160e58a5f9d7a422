"""Run a model's frozen bottom layers once, then train only its top layers.

A router that fine-tunes the top `n` transformer blocks of an encoder sees the same output of the
frozen blocks below them in every epoch. `FrozenCache` computes that output once per prompt (no
autograd, length-sorted batches, no padding kept) and `forward_top` replays it through the top
blocks only. Both work on any Hugging Face model whose blocks `torch_utils.transformer_layers`
finds, without re-implementing its attention masks: `capture` stops the model's own forward pass
at the first trained block and records that block's input; `forward_top` runs the model's own
forward pass with the block list cut to the top blocks and swaps the cached states in for the
embeddings. The model itself builds the attention mask either way, so the top blocks see exactly
what they see in a full forward pass (`check_replay` verifies this on real prompts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from switchllm.errors import SwitchLLMError
from switchllm.routers import torch_utils as tu

if TYPE_CHECKING:
    import torch

# Cached states are float32 while they fit this budget, else float16 (half the memory, ~3 decimal
# digits: far below the noise of training, and the trained model is used through the full path).
FLOAT32_BUDGET_BYTES = 1 << 30
CAPTURE_BATCH = 64


class _Captured(Exception):  # noqa: N818 - control flow, not an error
    """Raised by the capture hook to stop a forward pass once the wanted input is recorded."""


def _hidden_arg(args: tuple[Any, ...], kwargs: dict[str, Any]) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _replace_hidden(
    args: tuple[Any, ...], kwargs: dict[str, Any], hidden: torch.Tensor
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


def capture(
    model: torch.nn.Module, first_trained: int, ids: torch.Tensor, mask: torch.Tensor,
    **forward_kwargs: Any,
) -> torch.Tensor:
    """(batch, width, hidden) input of block `first_trained` (the model's output when every
    block is frozen), computed without autograd. `forward_kwargs` go to the model's forward
    (e.g. a causal LM's key/value cache of a shared prompt prefix)."""
    import torch

    _, layers = tu.transformer_layers(model)
    with torch.no_grad():
        if first_trained >= len(layers):
            return model(input_ids=ids, attention_mask=mask, **forward_kwargs).last_hidden_state
        found: list[torch.Tensor] = []

        def hook(_: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
            found.append(_hidden_arg(args, kwargs))
            raise _Captured

        handle = layers[first_trained].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            model(input_ids=ids, attention_mask=mask, **forward_kwargs)
        except _Captured:
            pass
        finally:
            handle.remove()
    if not found:
        raise SwitchLLMError(f"block {first_trained} of {type(model).__name__} was never called")
    return found[0]


@contextmanager
def _only_top_layers(model: torch.nn.Module, first_trained: int) -> Iterator[torch.nn.Module]:
    """The model with its block list cut to blocks first_trained.. (restored on exit)."""
    import torch

    prefix, layers = tu.transformer_layers(model)
    parent_name, _, attr = prefix[:-1].rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, torch.nn.ModuleList(list(layers)[first_trained:]))
    try:
        yield layers[first_trained]
    finally:
        setattr(parent, attr, layers)


def forward_top(
    model: torch.nn.Module, first_trained: int, hidden: torch.Tensor, ids: torch.Tensor,
    mask: torch.Tensor, **forward_kwargs: Any,
) -> torch.Tensor:
    """The model's last hidden state, running only blocks first_trained.. on `hidden` (the
    cached input of block first_trained); autograd records the top blocks as usual.
    `forward_kwargs` go to the model's forward, as in `capture`."""
    _, layers = tu.transformer_layers(model)
    if first_trained >= len(layers):
        return hidden

    def hook(
        _: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        return _replace_hidden(args, kwargs, hidden.to(_hidden_arg(args, kwargs).dtype))

    with _only_top_layers(model, first_trained) as first_block:
        handle = first_block.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            return model(input_ids=ids, attention_mask=mask, **forward_kwargs).last_hidden_state
        finally:
            handle.remove()


class FrozenCache:
    """Per-prompt input of the first trained block, trimmed to the prompt's tokens."""

    def __init__(
        self, model: torch.nn.Module, first_trained: int, token_ids: Sequence[Sequence[int]],
        pad_id: int, device: str, progress: bool = True,
    ) -> None:
        import torch
        from tqdm.auto import tqdm

        self.model = model
        self.first_trained = first_trained
        self.token_ids = [list(t) for t in token_ids]
        self.pad_id = pad_id
        self.device = device
        hidden_size = int(model.config.hidden_size)
        n_bytes = 4 * hidden_size * sum(len(t) for t in self.token_ids)
        self.dtype = torch.float32 if n_bytes <= FLOAT32_BUDGET_BYTES else torch.float16
        self.states: list[torch.Tensor] = [torch.empty(0)] * len(self.token_ids)
        batches = list(tu.length_sorted_batches([len(t) for t in self.token_ids], CAPTURE_BATCH))
        for batch in tqdm(batches, desc="encoding frozen layers", unit="batch", leave=False,
                          disable=None if progress else True):
            ids, mask = tu.pad_batch([self.token_ids[i] for i in batch], pad_id, device)
            hidden = capture(model, first_trained, ids, mask)
            for row, i in enumerate(batch):
                self.states[i] = hidden[row, : len(self.token_ids[i])].to(
                    "cpu", self.dtype, copy=True)

    def __len__(self) -> int:
        return len(self.states)

    def nbytes(self) -> int:
        return sum(s.numel() * s.element_size() for s in self.states)

    def batch(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(hidden, input_ids, attention_mask) for `rows`, right-padded to the longest."""
        import torch

        ids, mask = tu.pad_batch([self.token_ids[i] for i in rows], self.pad_id, self.device)
        hidden = torch.nn.utils.rnn.pad_sequence([self.states[i] for i in rows],
                                                 batch_first=True)
        return hidden.to(self.device, torch.float32), ids, mask

    def last_hidden(self, rows: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(last hidden state, attention_mask) of `rows` through the top blocks."""
        hidden, ids, mask = self.batch(rows)
        return forward_top(self.model, self.first_trained, hidden, ids, mask), mask

    def check_replay(self, rows: Sequence[int], atol: float = 1e-3) -> float:
        """Largest difference between the replayed and a full forward pass on `rows` (model in
        eval mode); raises if they differ, which would mean the model's forward pass does not
        feed its blocks in sequence and the cache cannot be used."""
        import torch

        with torch.no_grad():
            replayed, mask = self.last_hidden(rows)
            ids, _ = tu.pad_batch([self.token_ids[i] for i in rows], self.pad_id, self.device)
            full = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        keep = mask.bool()
        diff = float((replayed[keep] - full[keep]).abs().max())
        scale = float(full[keep].abs().max())
        tolerance = atol * max(1.0, scale) * (1 if self.dtype == torch.float32 else 10)
        if not diff <= tolerance:
            raise SwitchLLMError(
                f"cannot train {type(self.model).__name__} from cached frozen layers: replaying "
                f"the top blocks differs from a full forward pass by {diff:.3g}"
            )
        return diff
