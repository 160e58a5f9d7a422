"""A lean CPU inference path for BERT sentence encoders (all-MiniLM-L6-v2 and its kin).

transformers' `BertModel` plus sentence-transformers' `encode` spend most of a short prompt's
time in eager-mode overhead (hundreds of small ops, hooks, feature dicts), not in the matmuls.
This module runs the same forward pass with a few plain torch functional ops on the model's own
safetensors weights: fused QKV projection, `scaled_dot_product_attention`, post-LayerNorm, exact
(erf) GELU, mean pooling over the attention mask, L2 normalisation. It reproduces
sentence-transformers' embeddings to about 1e-6 (fp32) and is about twice as fast for one prompt.

Only the plain layout is accepted (`BertSentenceEncoder.supports`): a BERT config with absolute
positions and GELU, and a sentence-transformers pipeline of Transformer -> mean Pooling ->
optional Normalize. Anything else raises `UnsupportedEncoder` so the caller falls back to
sentence-transformers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

TRANSFORMER_MODULE = "sentence_transformers.models.Transformer"
POOLING_MODULE = "sentence_transformers.models.Pooling"
NORMALIZE_MODULE = "sentence_transformers.models.Normalize"


class UnsupportedEncoder(Exception):
    """The model directory is not a plain BERT mean-pooling sentence encoder."""


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UnsupportedEncoder(f"cannot read {path}: {exc}") from exc


def _check_layout(model_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(BERT config, sentence-bert config) if `model_dir` is a layout this module reproduces."""
    config = _read_json(model_dir / "config.json")
    problems = []
    if config.get("model_type") != "bert":
        problems.append(f"model_type {config.get('model_type')!r}")
    if config.get("hidden_act") != "gelu":  # transformers' "gelu" is the exact erf form
        problems.append(f"hidden_act {config.get('hidden_act')!r}")
    if config.get("position_embedding_type", "absolute") != "absolute":
        problems.append(f"position_embedding_type {config.get('position_embedding_type')!r}")
    if config.get("is_decoder") or config.get("add_cross_attention"):
        problems.append("decoder / cross-attention")
    if config["hidden_size"] % config["num_attention_heads"]:
        problems.append("hidden_size not divisible by num_attention_heads")
    modules = _read_json(model_dir / "modules.json")
    types = [m.get("type", "").replace(".base.modules.", ".models.") for m in modules]
    types = [t.replace(".sentence_transformer.modules.", ".models.") for t in types]
    head, tail = types[:2], types[2:]
    if head != [TRANSFORMER_MODULE, POOLING_MODULE] or tail not in ([], [NORMALIZE_MODULE]):
        problems.append(f"modules {types}")
    elif modules[0].get("path", "") not in ("", "."):
        problems.append(f"transformer path {modules[0].get('path')!r}")
    else:
        pooling = _read_json(model_dir / modules[1]["path"] / "config.json")
        modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v)
        if modes != ["pooling_mode_mean_tokens"]:
            problems.append(f"pooling {modes}")
    for name in ("model.safetensors", "tokenizer.json"):
        if not (model_dir / name).is_file():
            problems.append(f"no {name}")
    if problems:
        raise UnsupportedEncoder(f"{model_dir}: not a plain BERT mean-pooling encoder: "
                                 + ", ".join(problems))
    st_config_path = model_dir / "sentence_bert_config.json"
    st_config = _read_json(st_config_path) if st_config_path.is_file() else {}
    return config, st_config


class BertSentenceEncoder:
    """`encode(texts)` -> float32 (n, hidden) L2-normalised embeddings, equal to
    `SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True)` up to float
    rounding. `onednn`: use oneDNN's packed fp32 GEMM (None: if this torch build has it)."""

    def __init__(self, model_dir: str | Path, onednn: bool | None = None) -> None:
        import torch
        from safetensors.torch import load_file
        from tokenizers import Tokenizer

        model_dir = Path(model_dir)
        config, st_config = _check_layout(model_dir)
        self.dim: int = config["hidden_size"]
        self.heads: int = config["num_attention_heads"]
        self.eps: float = config.get("layer_norm_eps", 1e-12)
        self.lowercase = bool(st_config.get("do_lower_case", False))
        tokenizer_config_path = model_dir / "tokenizer_config.json"
        tokenizer_config = (_read_json(tokenizer_config_path)
                            if tokenizer_config_path.is_file() else {})
        # sentence-transformers caps the tokenizer at max_seq_length, then at the position table
        limits = [st_config.get("max_seq_length") or tokenizer_config.get("model_max_length"),
                  config["max_position_embeddings"]]
        self.max_length = int(min(v for v in limits if v))

        self.tokenizer = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=self.max_length)
        self.pad_id = int(config.get("pad_token_id") or 0)

        weights = load_file(str(model_dir / "model.safetensors"))
        prefixes = [p for p in ("bert.", "model.", "") if f"{p}embeddings.word_embeddings.weight"
                    in weights]
        if not prefixes:
            raise UnsupportedEncoder(f"{model_dir}: no BERT embedding weights")
        prefix = prefixes[0]

        def w(name: str) -> torch.Tensor:
            key = prefix + name
            if key not in weights:
                raise UnsupportedEncoder(f"{model_dir}: weight {key} missing")
            return weights[key].float().contiguous()

        self.word = w("embeddings.word_embeddings.weight")
        self.position = w("embeddings.position_embeddings.weight")
        # every input is one segment: token type 0, folded into the position table once
        self.position_type0 = (self.position + w("embeddings.token_type_embeddings.weight")[0])
        self.emb_ln = (w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"))
        self.layers: list[dict[str, torch.Tensor]] = []
        qkv = ("query", "key", "value")
        for i in range(config["num_hidden_layers"]):
            att, out = f"encoder.layer.{i}.attention.", f"encoder.layer.{i}.output."
            self.layers.append({
                "qkv_w": torch.cat([w(f"{att}self.{n}.weight") for n in qkv]),
                "qkv_b": torch.cat([w(f"{att}self.{n}.bias") for n in qkv]),
                "out_w": w(att + "output.dense.weight"), "out_b": w(att + "output.dense.bias"),
                "ln1_w": w(att + "output.LayerNorm.weight"),
                "ln1_b": w(att + "output.LayerNorm.bias"),
                "up_w": w(f"encoder.layer.{i}.intermediate.dense.weight"),
                "up_b": w(f"encoder.layer.{i}.intermediate.dense.bias"),
                "down_w": w(out + "dense.weight"), "down_b": w(out + "dense.bias"),
                "ln2_w": w(out + "LayerNorm.weight"), "ln2_b": w(out + "LayerNorm.bias"),
            })
        self.backend = "aten"
        if onednn is not False:
            self._pack_for_onednn(required=bool(onednn))

    def _pack_for_onednn(self, required: bool) -> None:
        """Pre-pack the linear weights for oneDNN: on AMD CPUs MKL's sgemm (behind F.linear)
        skips AVX-512, and for a short prompt oneDNN's packed fp32 GEMM is about twice as fast.
        Same fp32 arithmetic, different summation order (~1e-6). Used only if the private ops
        exist and agree with F.linear on this machine."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual torch alias

        try:
            pack = torch.ops.mkldnn._reorder_linear_weight
            fused = torch.ops.mkldnn._linear_pointwise
            packed = [{k: pack(v) for k, v in layer.items() if k.endswith("_w")
                       and not k.startswith("ln")} for layer in self.layers]
            layer, probe = self.layers[0], torch.linspace(-1.0, 1.0, 3 * self.dim).view(3, -1)
            with torch.inference_mode():
                got = fused(probe, packed[0]["up_w"], layer["up_b"], "gelu", [], "none")
                want = F.gelu(F.linear(probe, layer["up_w"], layer["up_b"]))
            if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
                raise RuntimeError("oneDNN linear disagrees with F.linear")
        except (AttributeError, RuntimeError) as exc:
            if required:
                raise UnsupportedEncoder(f"oneDNN linear unavailable: {exc}") from exc
            return
        for layer, weights in zip(self.layers, packed, strict=True):
            layer.update({f"onednn_{k}": v for k, v in weights.items()})
        self.backend = "onednn"

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text, truncated to `max_length` (special tokens included), as
        sentence-transformers' Transformer module produces them (it strips the text)."""
        texts = [t.strip() for t in texts]
        if self.lowercase:
            texts = [t.lower() for t in texts]
        return [enc.ids for enc in self.tokenizer.encode_batch(texts, add_special_tokens=True)]

    def forward(self, ids: Any, mask: Any | None) -> Any:
        """Mean-pooled, L2-normalised embeddings for a padded (batch, length) id tensor;
        `mask` is the bool attention mask, or None when nothing is padded."""
        import torch
        import torch.nn.functional as F  # noqa: N812 - the usual torch alias

        batch, length = ids.shape
        heads, head_dim = self.heads, self.dim // self.heads
        x = F.embedding(ids, self.word) + self.position_type0[:length]
        x = F.layer_norm(x, (self.dim,), *self.emb_ln, self.eps)
        attn_mask = None if mask is None else mask[:, None, None, :]
        onednn = self.backend == "onednn"
        if onednn:
            fused = torch.ops.mkldnn._linear_pointwise
        for layer in self.layers:
            if onednn:
                qkv = fused(x, layer["onednn_qkv_w"], layer["qkv_b"], "none", [], "")
            else:
                qkv = F.linear(x, layer["qkv_w"], layer["qkv_b"])
            q, k, v = qkv.view(batch, length, 3, heads, head_dim).permute(2, 0, 3, 1, 4)
            context = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
            context = context.transpose(1, 2).reshape(batch, length, self.dim)
            if onednn:  # residual add and GELU (erf form, "none") fused into the GEMM
                x = fused.binary(context, x, layer["onednn_out_w"], layer["out_b"], "add")
                x = F.layer_norm(x, (self.dim,), layer["ln1_w"], layer["ln1_b"], self.eps)
                hidden = fused(x, layer["onednn_up_w"], layer["up_b"], "gelu", [], "none")
                x = fused.binary(hidden, x, layer["onednn_down_w"], layer["down_b"], "add")
            else:
                x = F.layer_norm(F.linear(context, layer["out_w"], layer["out_b"]) + x,
                                 (self.dim,), layer["ln1_w"], layer["ln1_b"], self.eps)
                hidden = F.gelu(F.linear(x, layer["up_w"], layer["up_b"]))
                x = F.linear(hidden, layer["down_w"], layer["down_b"]) + x
            x = F.layer_norm(x, (self.dim,), layer["ln2_w"], layer["ln2_b"], self.eps)
        if mask is None:
            pooled = x.mean(dim=1)
        else:
            weights = mask.unsqueeze(-1).to(x.dtype)
            pooled = (x * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled, p=2.0, dim=1)

    def encode(self, texts: Sequence[str], batch_size: int = 64,
               progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32 L2-normalised embeddings. Batches hold texts of similar
        token length (sorted), padded to the longest in the batch."""
        import torch
        from tqdm import tqdm

        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        token_ids = self.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(token_ids[i]))
        starts = range(0, len(order), batch_size)
        with torch.inference_mode():
            for start in tqdm(starts, desc="embedding", unit="batch",
                              disable=not progress or len(starts) < 2):
                rows = order[start:start + batch_size]
                lengths = [len(token_ids[i]) for i in rows]
                longest = max(lengths)
                ids = torch.full((len(rows), longest), self.pad_id, dtype=torch.long)
                for r, i in enumerate(rows):
                    ids[r, :lengths[r]] = torch.tensor(token_ids[i], dtype=torch.long)
                mask = None
                if min(lengths) < longest:
                    mask = torch.arange(longest)[None, :] < torch.tensor(lengths)[:, None]
                out[rows] = self.forward(ids, mask).numpy()
        return out
