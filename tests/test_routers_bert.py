"""The bert router: fine-tunes the top of an encoder on battles, scores every known model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from neural_fixtures import STRONG, WEAK, make_tiny_bert, minilm_dir, mmlu_battles
from safetensors.numpy import load_file

from switchllm.data.battles import Battles
from switchllm.errors import CardError, SwitchLLMError, UnknownModelError
from switchllm.routers import load_router
from switchllm.routers import torch_utils as tu
from switchllm.routers.bert import BertRouter

FAST = {"max_length": 64, "epochs": 1, "train_layers": 1, "batch_size": 32}
N_TRAIN = 128


@pytest.fixture(scope="module")
def mmlu_router() -> tuple[BertRouter, list[str]]:
    battles = mmlu_battles(N_TRAIN, seed=1)
    return BertRouter(**FAST).fit(battles), battles.prompts[:24]


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_bert(tmp_path_factory.mktemp("tiny_bert") / "model")


def test_fit_on_real_mmlu_battles_gives_valid_win_rates(mmlu_router) -> None:
    router, prompts = mmlu_router
    assert router.models == [STRONG, WEAK]
    assert router.default_pair == (STRONG, WEAK)
    rates = router.win_rate(prompts)
    assert rates.shape == (len(prompts),)
    assert np.all((rates >= 0) & (rates <= 1)) and np.isfinite(rates).all()
    assert rates.std() > 0  # depends on the prompt
    reverse = router.win_rate(prompts, strong=WEAK, weak=STRONG)
    np.testing.assert_allclose(rates + reverse, 1.0, atol=1e-9)
    assert router.model_scores(prompts).shape == (len(prompts), 2)
    assert router.card_info["training"]["n_battles"] == N_TRAIN  # one pair per prompt


def test_training_on_cached_frozen_layers_equals_the_full_model(mmlu_router) -> None:
    # fit trains the top layer on cached outputs of the five frozen ones; the trained router,
    # run through the whole encoder, must give the scores that training path gives.
    router, prompts = mmlu_router
    token_ids = router._tokenize(prompts)
    cache = router._frozen_cache(token_ids, progress=False)
    assert [len(s) for s in cache.states] == [len(t) for t in token_ids]  # no padding kept
    with torch.no_grad():
        cached = router._cached_scores(cache, list(range(len(prompts))), train=False).numpy()
    full = router.model_scores(prompts)
    assert np.abs(full).max() > 1e-3
    np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-5)
    assert router.card_info["training"]["frozen_cache_seconds"] >= 0


@pytest.mark.parametrize("train_layers", [0, 1, 2])
def test_replaying_the_top_layers_matches_a_full_forward_pass(
    tiny_bert: Path, train_layers: int
) -> None:
    prompts = ["a short one", "a much longer prompt " * 6, "what is 2 + 2?"]
    router = BertRouter(base_model=str(tiny_bert), train_layers=train_layers, max_length=32)
    router._load_base()
    cache = router._frozen_cache(router._tokenize(prompts), progress=False)
    hidden, mask = cache.last_hidden([2, 0, 1])
    ids, full_mask = tu.pad_batch(router._tokenize([prompts[i] for i in (2, 0, 1)]), 0, "cpu")
    with torch.no_grad():
        full = router._encoder(input_ids=ids, attention_mask=full_mask).last_hidden_state
    keep = mask.bool()
    torch.testing.assert_close(hidden[keep], full[keep], rtol=1e-5, atol=1e-5)
    assert cache.check_replay([0, 1, 2]) < 1e-4


def test_card_round_trip_gives_identical_scores(mmlu_router, tmp_path: Path) -> None:
    router, prompts = mmlu_router
    router.save(tmp_path / "card")
    loaded = load_router(tmp_path / "card")
    assert isinstance(loaded, BertRouter)
    assert loaded.get_params() == router.get_params()
    np.testing.assert_array_equal(loaded.win_rate(prompts), router.win_rate(prompts))


def test_card_stores_only_the_trained_tensors(mmlu_router, tmp_path: Path) -> None:
    router, _ = mmlu_router
    router.save(tmp_path / "card")
    weights = tmp_path / "card" / "weights.safetensors"
    # one of six MiniLM layers plus the head, in float16: far below the 90 MB base model
    assert weights.stat().st_size < (minilm_dir() / "model.safetensors").stat().st_size / 10
    names = set(load_file(str(weights)))
    assert {"head.weight", "head.bias"} <= names
    assert all(n.startswith(("head.", "encoder.encoder.layer.5.")) for n in names)
    card = json.loads((tmp_path / "card" / "router.json").read_text())
    assert card["base"]["name"] == "all-MiniLM-L6-v2" and len(card["base"]["config_sha256"]) == 64


def test_loading_on_a_different_base_is_refused(
    mmlu_router, tiny_bert: Path, tmp_path: Path
) -> None:
    router, _ = mmlu_router
    router.save(tmp_path / "card")
    card_json = tmp_path / "card" / "router.json"
    card = json.loads(card_json.read_text())
    card["params"]["base_model"] = str(tiny_bert)
    card_json.write_text(json.dumps(card))
    with pytest.raises(CardError, match="differs from the one this router was trained on"):
        load_router(tmp_path / "card")


def test_learns_every_model_in_multi_model_battles(tiny_bert: Path) -> None:
    # "champion" wins every battle against the two others; they tie among themselves.
    prompts = [f"question number {i} about topic {i % 7}" for i in range(24)]
    records = []
    for p in prompts:
        records += [(p, "champion", "a", 1.0), (p, "b", "champion", 0.0), (p, "a", "b", 0.5)]
    battles = Battles.from_records(records)
    router = BertRouter(base_model=str(tiny_bert), epochs=4, batch_size=8, head_lr=5e-2,
                        max_length=32).fit(battles)
    assert router.models == ["champion", "a", "b"]
    assert router.win_rate(prompts, "champion", "a").min() > 0.6
    assert router.win_rate(prompts, "champion", "b").min() > 0.6
    with pytest.raises(UnknownModelError, match="does not know model 'gpt-5'"):
        router.win_rate(prompts, "gpt-5", "a")


def test_bad_settings_and_untrained_use_are_clear_errors(tiny_bert: Path, tmp_path: Path) -> None:
    with pytest.raises(SwitchLLMError, match="not trained"):
        BertRouter(base_model=str(tiny_bert)).win_rate(["hi"])
    battles = Battles.from_records([("p", "x", "y", 1.0)])
    with pytest.raises(SwitchLLMError, match="train_layers must be between 0 and 2"):
        BertRouter(base_model=str(tiny_bert), train_layers=3).fit(battles)
    with pytest.raises(SwitchLLMError, match="not a local Hugging Face model directory"):
        BertRouter(base_model=str(tmp_path / "missing")).fit(battles)
    (tmp_path / "bin_only").mkdir()
    (tmp_path / "bin_only" / "config.json").write_text("{}")
    (tmp_path / "bin_only" / "pytorch_model.bin").write_bytes(b"not loaded")
    with pytest.raises(SwitchLLMError, match="only safetensors"):
        BertRouter(base_model=str(tmp_path / "bin_only")).fit(battles)
