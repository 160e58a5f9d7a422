"""Cheap text features of a prompt that sentence embeddings mostly miss: how long it is and how
much arithmetic, structure and code it holds (a proxy for difficulty within one topic).

Embedding routers can append them, standardised on their training prompts and scaled by their
`text_features` weight, to each prompt embedding (see `EmbeddingRouter`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

FEATURE_NAMES = ("log_chars", "log_numbers", "log_lines", "log_words")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def raw_text_features(texts: Sequence[str]) -> np.ndarray:
    """(n, len(FEATURE_NAMES)) float64: log1p of characters, numbers, line breaks and words."""
    out = np.empty((len(texts), len(FEATURE_NAMES)))
    for i, text in enumerate(texts):
        out[i] = (len(text), len(_NUMBER.findall(text)), text.count("\n"), len(text.split()))
    return np.log1p(out)


class TextFeatureScaler:
    """Standardises raw text features with the training prompts' mean and spread."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float64)
        self.std = np.asarray(std, dtype=np.float64)

    @classmethod
    def fit(cls, texts: Sequence[str]) -> TextFeatureScaler:
        raw = raw_text_features(texts)
        # a feature constant on the training prompts carries nothing: spread 1 keeps it finite
        std = raw.std(axis=0)
        return cls(raw.mean(axis=0), np.where(std > 1e-9, std, 1.0))

    def transform(self, texts: Sequence[str]) -> np.ndarray:
        return ((raw_text_features(texts) - self.mean) / self.std).astype(np.float32)
