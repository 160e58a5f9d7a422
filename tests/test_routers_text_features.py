"""Text features for embedding routers: they carry difficulty signals embeddings miss, reach the
router through `win_rate(prompts)`, and persist on the card."""

from __future__ import annotations

import numpy as np
import pytest

from switchllm.data.battles import Battles
from switchllm.errors import CardError
from switchllm.routers import load_router, router_class
from switchllm.routers.text_features import FEATURE_NAMES, TextFeatureScaler, raw_text_features

STRONG, WEAK = "strong-model", "weak-model"
KINDS = ["knn", "sw_ranking", "mf"]


def _sum_prompt(n_terms: int, variant: int) -> str:
    terms = " + ".join(str(7 * variant + 3 * i + 11) for i in range(n_terms))
    return f"Please add up the following numbers and give the total: {terms}"


def _length_battles() -> tuple[Battles, list[str], np.ndarray]:
    """One topic (adding numbers): the weak model is right on short sums only, so only the
    amount of numbers, not the topic, says when the strong model is needed."""
    prompts, hard = [], []
    for variant in range(40):
        for n_terms in (2, 3, 12, 16):
            prompts.append(_sum_prompt(n_terms, variant))
            hard.append(n_terms > 8)
    hard_arr = np.array(hard)
    battles = Battles.from_records(
        [(p, STRONG, WEAK, 1.0 if h else 0.0) for p, h in zip(prompts, hard, strict=True)])
    return battles, prompts, hard_arr


def test_features_measure_length_and_numbers() -> None:
    raw = raw_text_features(["two words", "1 and 2.5\nthree 4,000"])
    assert raw.shape == (2, len(FEATURE_NAMES))
    np.testing.assert_allclose(np.expm1(raw), [[9, 0, 0, 2], [21, 3, 1, 5]])
    scaler = TextFeatureScaler.fit(["a", "a"])  # constant features stay finite
    assert np.isfinite(scaler.transform(["a much longer prompt 12"])).all()


@pytest.mark.parametrize("kind", KINDS)
def test_text_features_separate_what_embeddings_cannot(kind: str, tmp_path) -> None:
    battles, prompts, hard = _length_battles()
    train = np.arange(len(prompts)) // 4 % 4 != 0  # hold out every 4th variant
    params = {"epochs": 60} if kind == "mf" else {}
    with_features = router_class(kind)(text_features=1.0, **params).fit(
        battles.select_prompts(train))
    held_out = [p for p, keep in zip(prompts, train, strict=True) if not keep]
    rates = with_features.win_rate(held_out, STRONG, WEAK)
    gap = rates[hard[~train]].mean() - rates[~hard[~train]].mean()
    assert gap > 0.3, f"{kind} with text features: strong-win gap {gap:.3f}"
    # ... and the card keeps them: a loaded router answers identically from prompts
    with_features.save(tmp_path / kind)
    loaded = load_router(tmp_path / kind)
    assert loaded.get_params()["text_features"] == 1.0
    np.testing.assert_allclose(loaded.win_rate(held_out, STRONG, WEAK), rates, atol=1e-6)
    with pytest.raises(CardError, match="text features"):
        loaded.win_rate_from_embeddings(loaded.embedder().embed(held_out), STRONG, WEAK)


def test_embeddings_alone_do_not_separate_the_sums() -> None:
    # the control for the test above: without features knn cannot tell short from long sums
    battles, prompts, hard = _length_battles()
    train = np.arange(len(prompts)) // 4 % 4 != 0
    router = router_class("knn")(text_features=0.0).fit(battles.select_prompts(train))
    held_out = [p for p, keep in zip(prompts, train, strict=True) if not keep]
    rates = router.win_rate(held_out, STRONG, WEAK)
    assert rates[hard[~train]].mean() - rates[~hard[~train]].mean() < 0.3
