"""Shipped prompt scores of a card: used only for the card's own weights and model list."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from neural_fixtures import make_tiny_bert

from switchllm.data.battles import Battles
from switchllm.routers import DEFAULTS_DIR, load_router
from switchllm.routers.bert import BertRouter
from switchllm.routers.score_cache import SCORES_FILE, ScoreCache, write_score_cache


@pytest.fixture(scope="module")
def card(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("score_cache")
    prompts = [f"question {i} about topic {i % 5}" for i in range(12)]
    battles = Battles.from_records([(p, "strong", "weak", float(i % 2))
                                    for i, p in enumerate(prompts)])
    router = BertRouter(base_model=str(make_tiny_bert(root / "base")), max_length=32,
                        batch_size=8)
    return router.fit(battles, progress=False).save(root / "card"), prompts


def test_cached_prompts_are_read_and_the_rest_computed(card, tmp_path: Path) -> None:
    source, prompts = card
    directory = shutil.copytree(source, tmp_path / "card")
    computed = load_router(directory).model_scores(prompts)
    marked = computed[:6] + 7.0  # distinguishable from a computed score
    write_score_cache(directory, prompts[:6], marked, load_router(directory).models)
    scores = load_router(directory).model_scores(prompts)
    np.testing.assert_allclose(scores[:6], marked, atol=1e-2)  # stored as float16
    np.testing.assert_allclose(scores[6:], computed[6:], atol=1e-5)


def test_a_cache_of_other_weights_or_models_is_ignored(card, tmp_path: Path) -> None:
    source, prompts = card
    directory = shutil.copytree(source, tmp_path / "card")
    router = load_router(directory)
    computed = router.model_scores(prompts)
    write_score_cache(directory, prompts, computed + 7.0, router.models)
    with open(directory / "weights.safetensors", "ab") as f:  # the card changed since
        f.write(b" ")
    assert ScoreCache.for_card(directory, router.models) is None
    write_score_cache(directory, prompts, computed + 7.0, router.models[::-1])
    assert ScoreCache.for_card(directory, router.models) is None
    (directory / SCORES_FILE).write_bytes(b"not safetensors")
    assert ScoreCache.for_card(directory, router.models) is None


def test_a_trained_router_never_reads_a_cache(card) -> None:
    assert BertRouter()._cached_prompt_scores() is None


@pytest.mark.slow
def test_the_shipped_bert_cache_matches_the_card() -> None:
    from switchllm.data.benchmarks import load_benchmark

    router = load_router("bert")
    cache = ScoreCache.for_card(DEFAULTS_DIR / "bert", router.models)
    assert cache is not None, "rerun scripts/build_score_cache.py after retraining bert"
    prompts = list(load_benchmark("mmlu").prompts[::1000]) + list(
        load_benchmark("mt-bench").prompts[:4])
    rows, cached = cache.lookup(prompts)
    assert len(rows) == len(prompts)
    router._score_cache = None  # compute
    # float16 keeps ~3 significant digits
    np.testing.assert_allclose(cached, router.model_scores(prompts), rtol=1e-3, atol=1e-3)
