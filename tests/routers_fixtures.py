"""Shared test data for the router tests: a real 500-prompt MMLU sample (tests/data)."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from switchllm.data.battles import Battles

DATA = Path(__file__).parent / "data"
MMLU_SAMPLE = DATA / "mmlu_sample.csv"
STRONG = "gpt-4-1106-preview"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"


@functools.cache
def mmlu_battles() -> Battles:
    from switchllm.data.formats import load_training_data

    return load_training_data([MMLU_SAMPLE]).battles


@functools.cache
def mmlu_embeddings() -> np.ndarray:
    from switchllm.embeddings import get_embedder

    return get_embedder().embed(mmlu_battles().prompts)


@functools.cache
def mmlu_split() -> tuple[Battles, Battles]:
    from switchllm.training import split_by_prompt

    train, test = split_by_prompt(mmlu_battles(), 0.25, seed=0)
    assert test is not None
    return train, test


def embeddings_for(battles: Battles) -> np.ndarray:
    position = {p: i for i, p in enumerate(mmlu_battles().prompts)}
    return mmlu_embeddings()[[position[p] for p in battles.prompts]]
