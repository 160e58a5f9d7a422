"""Build the shipped embedding store: every prompt of every shipped set (benchmarks and training
splits), embedded with the default local model, as float16 in
`switchllm/data/embeddings/<model>.safetensors`. With it, evaluation and the default routers
never re-embed the ~25k shipped prompts on a fresh machine. The `+tail` variant's file holds
only the prompts longer than the encoder's window (for the others it is the base model's vector,
`LayeredStore`).

    python scripts/build_embedding_store.py        # uses (and fills) the embedding cache
"""

from __future__ import annotations

import numpy as np
from safetensors.numpy import save_file

from switchllm.data.benchmarks import BENCHMARKS, load_benchmark, shipped_training_battles
from switchllm.embeddings import (
    LOCAL_TAIL_MODEL,
    SHIPPED_DIR,
    HeadTailEmbedder,
    get_embedder,
    model_slug,
    text_key,
)


def shipped_prompts() -> list[str]:
    prompts: dict[str, None] = {}
    for name in BENCHMARKS:
        prompts.update(dict.fromkeys(load_benchmark(name).prompts))
    prompts.update(dict.fromkeys(shipped_training_battles(exclude=()).prompts))
    return list(prompts)


def write_store(name: str, prompts: list[str], vectors: np.ndarray) -> None:
    keys = np.frombuffer(b"".join(text_key(p) for p in prompts), dtype=np.uint8)
    SHIPPED_DIR.mkdir(parents=True, exist_ok=True)
    path = SHIPPED_DIR / f"{model_slug(name)}.safetensors"
    save_file({"keys": keys.reshape(-1, 16).copy(), "vectors": vectors.astype(np.float16)},
              str(path), metadata={"model": name, "dim": str(vectors.shape[1])})
    print(f"wrote {path}: {len(prompts)} prompts, {path.stat().st_size / 1e6:.1f} MB")


def main() -> None:
    prompts = shipped_prompts()
    embedder = get_embedder()
    write_store(embedder.name, prompts, embedder.embed(prompts, progress=True))
    tail = HeadTailEmbedder(embedder, embedder.inner)  # type: ignore[attr-defined]
    long = [p for p, cut in zip(prompts, tail.local.truncates(prompts), strict=True) if cut]
    write_store(LOCAL_TAIL_MODEL, long, tail.embed(long, progress=True))


if __name__ == "__main__":
    main()
