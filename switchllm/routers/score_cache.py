"""Shipped per-prompt model scores of a router card, for the shipped benchmark prompts.

A neural card (bert) spends minutes scoring the ~25k shipped benchmark prompts on a CPU, and
`make run` scores them on every fresh machine. The card directory can instead hold
`prompt_scores.safetensors`: the card's own `model_scores` of those prompts (`keys` uint8 (n, 16)
text hashes as in the embedding store, `scores` float16 (n, n_models): a logit's rounding error
is below 1e-3, far below what moves a routing decision), written by
`scripts/build_score_cache.py`. It is used only while it matches the card: its metadata records
the SHA-256 of the card's weights.safetensors and the card's model list, and any mismatch (a
retrained card, a copied file) makes the router ignore it and compute every score. Prompts not
in it are always computed.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from switchllm.embeddings import KEY_BYTES, text_key
from switchllm.routers.base import CARD_WEIGHTS

SCORES_FILE = "prompt_scores.safetensors"


def weights_digest(card_dir: Path) -> str:
    """SHA-256 of the card's weights file (what the cached scores were computed with)."""
    digest = hashlib.sha256()
    with open(card_dir / CARD_WEIGHTS, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class ScoreCache:
    """Read-only scores by prompt text, valid for one card's weights and model list."""

    def __init__(self, keys: np.ndarray, scores: np.ndarray) -> None:
        self.scores = scores
        self._row = {key.tobytes(): row for row, key in enumerate(keys)}

    def __len__(self) -> int:
        return len(self._row)

    def lookup(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows of `prompts` found, their cached scores)."""
        found = [(i, self._row.get(text_key(p))) for i, p in enumerate(prompts)]
        hits = [(i, row) for i, row in found if row is not None]
        rows = np.array([i for i, _ in hits], dtype=np.int64)
        return rows, self.scores[[row for _, row in hits]]

    @classmethod
    def for_card(cls, card_dir: str | Path | None, models: Sequence[str]) -> ScoreCache | None:
        """The card's cache, or None when it has none or it does not match the card."""
        from safetensors import SafetensorError, safe_open

        if card_dir is None:
            return None
        card_dir = Path(card_dir)
        path = card_dir / SCORES_FILE
        if not path.is_file() or not (card_dir / CARD_WEIGHTS).is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata() or {}
                if (meta.get("weights_sha256") != weights_digest(card_dir)
                        or json.loads(meta.get("models", "null")) != list(models)):
                    return None
                keys, scores = f.get_tensor("keys"), f.get_tensor("scores")
        except (OSError, ValueError, KeyError, SafetensorError):
            return None  # an unreadable cache only costs time: compute the scores instead
        if keys.shape != (len(scores), KEY_BYTES) or scores.shape[1:] != (len(models),):
            return None
        return cls(keys, scores.astype(np.float32))


def write_score_cache(card_dir: Path, prompts: Sequence[str], scores: np.ndarray,
                      models: Sequence[str]) -> Path:
    from safetensors.numpy import save_file

    keys = np.frombuffer(b"".join(text_key(p) for p in prompts), dtype=np.uint8)
    path = card_dir / SCORES_FILE
    tmp = path.with_suffix(".tmp")
    save_file({"keys": keys.reshape(-1, KEY_BYTES).copy(),
               "scores": np.ascontiguousarray(scores, dtype=np.float16)}, str(tmp),
              metadata={"weights_sha256": weights_digest(card_dir),
                        "models": json.dumps(list(models))})
    tmp.replace(path)
    return path
