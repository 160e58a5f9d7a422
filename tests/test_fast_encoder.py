"""The lean BERT encoder: same embeddings as sentence-transformers, used by default, and a
refusal (hence the sentence-transformers fallback) for layouts it does not reproduce."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from switchllm.data.benchmarks import load_benchmark
from switchllm.embeddings import LocalEmbedder
from switchllm.fast_encoder import BertSentenceEncoder, UnsupportedEncoder, _check_layout

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def model_dir() -> Path:
    return LocalEmbedder.model_path()


@pytest.fixture(scope="module")
def real_prompts() -> list[str]:
    """Varied real prompts (a few words to thousands of characters, so some are truncated at
    256 tokens), plus edge cases: empty, whitespace-padded, non-ASCII, very long."""
    prompts = list(load_benchmark("mt-bench").prompts[:60])
    prompts += [p for p in load_benchmark("arena-hard").prompts if len(p) < 400][:80]
    mmlu = load_benchmark("mmlu").prompts
    prompts += [p for p in mmlu[::97] if len(p) < 400][:60] + [mmlu[0], max(mmlu[:500], key=len)]
    return prompts + ["", "   padded question?  \n", "Ünïcödé 日本語 テスト 🙂 naïve café",
                      "word " * 600]


@pytest.fixture(scope="module")
def reference(real_prompts) -> np.ndarray:
    return LocalEmbedder.model().encode(real_prompts, batch_size=64, convert_to_numpy=True,
                                        normalize_embeddings=True)


def test_matches_sentence_transformers(model_dir, real_prompts, reference):
    encoder = BertSentenceEncoder(model_dir)
    got = encoder.encode(real_prompts, batch_size=64)
    assert got.dtype == np.float32 and got.shape == reference.shape
    assert np.abs(got - reference).max() < TOLERANCE
    assert np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    # one at a time (no padding: the single-prompt path) and in other batch mixes
    for i in (0, 61, len(real_prompts) - 1):
        assert np.abs(encoder.encode([real_prompts[i]]) - reference[i]).max() < TOLERANCE
    some = slice(0, 200, 5)
    mixed = encoder.encode(real_prompts[some][::-1], batch_size=7)[::-1]
    assert np.abs(mixed - reference[some]).max() < TOLERANCE


def test_plain_aten_path_matches_too(model_dir, real_prompts, reference):
    encoder = BertSentenceEncoder(model_dir, onednn=False)
    assert encoder.backend == "aten"
    some = slice(0, 200, 5)
    assert np.abs(encoder.encode(real_prompts[some]) - reference[some]).max() < TOLERANCE


def test_truncates_at_max_seq_length(model_dir):
    encoder = BertSentenceEncoder(model_dir)
    assert encoder.max_length == 256
    assert [len(ids) for ids in encoder.tokenize(["word " * 600, "hi"])] == [256, 3]


def test_local_embedder_uses_fast_encoder_by_default(monkeypatch, real_prompts, reference):
    assert isinstance(LocalEmbedder.encoder(), BertSentenceEncoder)

    def no_sentence_transformers(*args, **kwargs):
        raise AssertionError("sentence-transformers called on the default path")

    monkeypatch.setattr(LocalEmbedder, "model", classmethod(no_sentence_transformers))
    vectors = LocalEmbedder().embed(real_prompts[:20])
    assert np.abs(vectors - reference[:20]).max() < TOLERANCE


def test_local_embedder_falls_back_to_sentence_transformers(monkeypatch, real_prompts,
                                                            reference):
    monkeypatch.setattr(LocalEmbedder, "_encoder", False)  # as for an unsupported model
    assert np.abs(LocalEmbedder().embed(real_prompts[:5]) - reference[:5]).max() < TOLERANCE
    monkeypatch.undo()
    slow = LocalEmbedder(fast=False).embed(real_prompts[5:8])
    assert np.abs(slow - reference[5:8]).max() < TOLERANCE


def _edited_copy(model_dir: Path, tmp_path: Path, path: str, edit) -> Path:  # noqa: ANN001
    """A copy of the model directory (weights linked) with one JSON file edited."""
    copy = tmp_path / "model"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("model.safetensors"))
    (copy / "model.safetensors").symlink_to(model_dir / "model.safetensors")
    data = json.loads((copy / path).read_text())
    (copy / path).write_text(json.dumps(edit(data)))
    return copy


@pytest.mark.parametrize(("path", "edit", "problem"), [
    ("config.json", lambda c: {**c, "model_type": "roberta"}, "model_type 'roberta'"),
    ("config.json", lambda c: {**c, "hidden_act": "gelu_new"}, "hidden_act 'gelu_new'"),
    ("config.json", lambda c: {**c, "position_embedding_type": "relative_key"},
     "position_embedding_type"),
    ("1_Pooling/config.json",
     lambda c: {**c, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True},
     "pooling ['pooling_mode_cls_token']"),
    ("modules.json",
     lambda m: m + [{"idx": 3, "name": "3", "path": "3_Dense",
                     "type": "sentence_transformers.models.Dense"}], "modules"),
])
def test_refuses_layouts_it_does_not_reproduce(model_dir, tmp_path, path, edit, problem):
    _check_layout(model_dir)  # the shipped model is accepted
    with pytest.raises(UnsupportedEncoder, match=problem.replace("[", r"\[")):
        BertSentenceEncoder(_edited_copy(model_dir, tmp_path, path, edit))
