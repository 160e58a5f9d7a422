"""sw_ranking, mf and knn on a real MMLU sample: they learn, persist exactly, and refuse
embeddings they were not trained on."""

from __future__ import annotations

import json

import numpy as np
import pytest
from routers_fixtures import STRONG, WEAK, embeddings_for, mmlu_split

from switchllm.errors import CardError, UnknownModelError
from switchllm.routers import load_router, router_class
from switchllm.routers.embedding_router import bradley_terry
from switchllm.training import apgr, pair_gains

KINDS = ["sw_ranking", "mf", "knn"]
FAST = {"mf": {"epochs": 20}}


def inputs_for(router, battles) -> np.ndarray:
    """The router's input vectors (embeddings plus any text features) for `battles.prompts`."""
    return router.embed(battles.prompts, embeddings_for(battles))


@pytest.fixture(scope="module")
def fitted() -> dict:
    train, _ = mmlu_split()
    return {kind: router_class(kind)(**FAST.get(kind, {})).fit(
        train, embeddings=embeddings_for(train)) for kind in KINDS}


@pytest.mark.parametrize("kind", KINDS)
def test_router_beats_random_on_held_out_prompts(fitted: dict, kind: str) -> None:
    _, test = mmlu_split()
    prompts, gains = pair_gains(test, STRONG, WEAK)
    rates = fitted[kind].win_rate_from_embeddings(inputs_for(fitted[kind], test)[prompts],
                                                 STRONG, WEAK)
    assert rates.shape == (len(prompts),)
    assert np.all((rates >= 0) & (rates <= 1))
    score = apgr(rates, gains)
    assert score is not None and score > 0.6, f"{kind} APGR {score}"


@pytest.mark.parametrize("kind", KINDS)
def test_win_rate_embeds_prompts_like_precomputed(fitted: dict, kind: str) -> None:
    _, test = mmlu_split()
    prompts = test.prompts[:20]
    direct = fitted[kind].win_rate(prompts)
    precomputed = fitted[kind].win_rate_from_embeddings(inputs_for(fitted[kind], test)[:20])
    np.testing.assert_allclose(direct, precomputed, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_swapping_the_pair_complements_the_win_rate(fitted: dict, kind: str) -> None:
    _, test = mmlu_split()
    vectors = inputs_for(fitted[kind], test)[:50]
    forward = fitted[kind].win_rate_from_embeddings(vectors, STRONG, WEAK)
    backward = fitted[kind].win_rate_from_embeddings(vectors, WEAK, STRONG)
    np.testing.assert_allclose(forward + backward, 1.0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_save_and_load_give_identical_win_rates(fitted: dict, kind: str, tmp_path) -> None:
    _, test = mmlu_split()
    router = fitted[kind]
    router.save(tmp_path / kind)
    loaded = load_router(tmp_path / kind)
    assert type(loaded) is type(router)
    assert loaded.get_params() == router.get_params()
    assert loaded.models == router.models and loaded.embedding_model == router.embedding_model
    vectors = inputs_for(router, test)
    np.testing.assert_array_equal(loaded.win_rate_from_embeddings(vectors),
                                  router.win_rate_from_embeddings(vectors))
    np.testing.assert_array_equal(loaded.model_scores_from_embeddings(vectors),
                                  router.model_scores_from_embeddings(vectors))


@pytest.mark.parametrize("kind", KINDS)
def test_refuses_other_embedding_models(fitted: dict, kind: str, tmp_path) -> None:
    router = fitted[kind]
    with pytest.raises(CardError, match="384-dimensional"):
        router.win_rate_from_embeddings(np.zeros((2, 1536), dtype=np.float32))
    router.save(tmp_path / kind)
    card = json.loads((tmp_path / kind / "router.json").read_text())
    card["embedding_model"] = "openai:text-embedding-3-small"
    (tmp_path / kind / "router.json").write_text(json.dumps(card))
    other = load_router(tmp_path / kind)
    from switchllm.embeddings import get_embedder

    with pytest.raises(CardError, match="trained on 'openai:text-embedding-3-small'"):
        other.check_embedder(get_embedder())


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_model_is_refused(fitted: dict, kind: str) -> None:
    with pytest.raises(UnknownModelError, match="claude"):
        fitted[kind].win_rate_from_embeddings(
            np.zeros((1, fitted[kind].input_dim), np.float32), "claude", WEAK)


def test_mf_scores_explain_its_win_rates(fitted: dict) -> None:
    _, test = mmlu_split()
    router = fitted["mf"]
    vectors = inputs_for(router, test)[:30]
    scores = router.model_scores_from_embeddings(vectors)
    s, w = router.models.index(STRONG), router.models.index(WEAK)
    expected = 1 / (1 + np.exp(-(scores[:, s] - scores[:, w])))
    np.testing.assert_allclose(router.win_rate_from_embeddings(vectors), expected, atol=1e-5)


def test_sw_ranking_batches_equal_single_queries(fitted: dict) -> None:
    _, test = mmlu_split()
    router = fitted["sw_ranking"]
    vectors = inputs_for(router, test)[:12]
    batched = router.win_rate_from_embeddings(vectors)
    single = np.concatenate([router.win_rate_from_embeddings(v[None]) for v in vectors])
    np.testing.assert_allclose(batched, single, atol=1e-6)


def test_bradley_terry_recovers_known_odds() -> None:
    # model 0 beat model 1 in 75 of 100 battles and model 1 beat model 2 in 75 of 100:
    # odds 3:1 each, so r0 - r1 = r1 - r2 = log 3 (up to the tiny prior)
    incidence = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, -1.0]])
    ratings = bradley_terry(np.array([[75.0, 75.0]]), np.array([[100.0, 100.0]]), incidence,
                            reg=1e-6, n_iter=30)[0]
    np.testing.assert_allclose(np.diff(-ratings), [np.log(3), np.log(3)], rtol=1e-3)


def test_sw_ranking_sparse_sums_match_dense(fitted: dict, monkeypatch) -> None:
    from switchllm.routers import sw_ranking

    _, test = mmlu_split()
    router = fitted["sw_ranking"]
    vectors = inputs_for(router, test)[:40]
    dense = router.model_scores_from_embeddings(vectors)
    monkeypatch.setattr(sw_ranking, "DENSE_LIMIT", 0)
    router._prepare()
    try:
        assert router._dense is None
        np.testing.assert_allclose(router.model_scores_from_embeddings(vectors), dense,
                                   atol=1e-8)
    finally:
        monkeypatch.undo()
        router._prepare()
