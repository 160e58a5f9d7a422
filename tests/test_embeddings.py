"""Embeddings: the local default, an OpenAI-compatible endpoint on loopback, and the cache."""

import hashlib
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from switchllm.embeddings import CachedEmbedder, EmbeddingError, LocalEmbedder, OpenAIEmbedder


class _EmbeddingsHandler(BaseHTTPRequestHandler):
    requests: list[dict] = []
    status = 200

    def do_POST(self):  # noqa: N802 - http.server API
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).requests.append({"auth": self.headers.get("Authorization"), **body})
        if type(self).status != 200:
            self.send_response(type(self).status)
            self.end_headers()
            return
        data = []
        for i, text in enumerate(body["input"]):
            seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")
            vector = np.random.default_rng(seed).normal(size=8).tolist()
            data.append({"object": "embedding", "index": i, "embedding": vector})
        payload = json.dumps({"object": "list", "data": data[::-1], "model": body["model"]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload.encode())

    def log_message(self, *args):  # keep test output quiet
        pass


@pytest.fixture
def embeddings_server():
    _EmbeddingsHandler.requests = []
    _EmbeddingsHandler.status = 200
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EmbeddingsHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


def test_openai_compatible_endpoint_and_persistent_cache(embeddings_server, tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-secret-123")
    texts = ["alpha", "beta", "alpha", "gamma"]
    first = CachedEmbedder(
        OpenAIEmbedder("text-embedding-3-small", base_url=embeddings_server,
                       api_key_env="TEST_EMBED_KEY", batch_size=2),
        cache_dir=tmp_path,
    )
    assert first.name == "openai:text-embedding-3-small"
    vectors = first.embed(texts)
    assert vectors.shape == (4, 8) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])  # same text, same vector
    sent = [t for r in _EmbeddingsHandler.requests for t in r["input"]]
    assert sorted(sent) == ["alpha", "beta", "gamma"]  # duplicates embedded once
    assert all(r["auth"] == "Bearer sk-secret-123" for r in _EmbeddingsHandler.requests)

    # Small calls are written in batches (at the latest at exit); then a new process (a new
    # embedder) reads the on-disk cache and no request reaches the server.
    assert not list(tmp_path.rglob("*.safetensors"))
    first.flush()
    _EmbeddingsHandler.requests = []
    second = CachedEmbedder(
        OpenAIEmbedder("text-embedding-3-small", base_url=embeddings_server,
                       api_key_env="TEST_EMBED_KEY"),
        cache_dir=tmp_path,
    )
    np.testing.assert_array_equal(second.embed(texts), vectors)
    assert _EmbeddingsHandler.requests == []


def test_endpoint_errors_are_clear_and_keep_the_key_secret(embeddings_server, monkeypatch):
    monkeypatch.setenv("TEST_EMBED_KEY", "sk-secret-123")
    monkeypatch.setattr("time.sleep", lambda s: None)
    _EmbeddingsHandler.status = 401
    embedder = OpenAIEmbedder("m", base_url=embeddings_server, api_key_env="TEST_EMBED_KEY")
    with pytest.raises(EmbeddingError, match="HTTP 401") as excinfo:
        embedder.embed(["x"])
    assert "sk-secret" not in str(excinfo.value)
    assert len(_EmbeddingsHandler.requests) == 1  # 401 is not retried


def test_local_default_model_embeds_offline(tmp_path):
    embedder = CachedEmbedder(LocalEmbedder(), cache_dir=tmp_path, use_shipped=False)
    vectors = embedder.embed([
        "How do I bake sourdough bread?",
        "What is a good recipe for sourdough?",
        "Prove that there are infinitely many primes.",
    ])
    assert vectors.shape == (3, 384)
    similar, different = vectors[0] @ vectors[1], vectors[0] @ vectors[2]
    assert similar > different + 0.2


def test_cache_shards_are_batched_and_compacted(embeddings_server, tmp_path, monkeypatch):
    monkeypatch.setattr(CachedEmbedder, "FLUSH_SECONDS", 3600.0)  # rows decide, not a slow host
    def embedder() -> CachedEmbedder:
        return CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path,
                              use_shipped=False)

    first = embedder()
    for i in range(CachedEmbedder.FLUSH_ROWS + 1):  # one prompt per call, like a server
        first.embed([f"prompt {i}"])
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1  # one shard, not one per call
    for i in range(CachedEmbedder.COMPACT_SHARDS):
        many = embedder()
        many.embed([f"other {i}"])
        many.flush()
    assert len(list(tmp_path.rglob("*.safetensors"))) == CachedEmbedder.COMPACT_SHARDS + 1
    compacted = embedder()  # loading compacts into one shard holding everything
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    _EmbeddingsHandler.requests = []
    compacted.embed(["prompt 0", f"prompt {CachedEmbedder.FLUSH_ROWS - 1}", "other 3"])
    assert _EmbeddingsHandler.requests == []


def test_cache_is_a_bounded_lru_in_memory_and_on_disk(embeddings_server, tmp_path):
    def embedder(max_entries: int = 4) -> CachedEmbedder:
        return CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path,
                              use_shipped=False, max_entries=max_entries)

    cache = embedder()
    cache.embed(["a", "b", "c", "d"])
    cache.embed(["a"])  # used again: now the most recent
    _EmbeddingsHandler.requests = []
    cache.embed(["e", "f"])  # evicts b and c, the least recently used
    assert len(cache) == 4
    _EmbeddingsHandler.requests = []
    cache.embed(["a", "d", "e", "f"])
    assert _EmbeddingsHandler.requests == []  # all still cached
    cache.embed(["b"])
    assert [r["input"] for r in _EmbeddingsHandler.requests] == [["b"]]  # evicted: again
    # a batch larger than the cache still returns every vector, in order
    many = [f"t{i}" for i in range(10)]
    vectors = cache.embed(many)
    assert vectors.shape == (10, cache.dim) and len(cache) == 4
    assert np.allclose(vectors[7], cache.inner.embed(["t7"])[0])
    cache.flush()
    # on disk too: reloading keeps at most max_entries (the newest) and rewrites one shard
    reloaded = embedder()
    assert len(reloaded) == 4
    assert len(list(tmp_path.rglob("*.safetensors"))) == 1
    _EmbeddingsHandler.requests = []
    reloaded.embed(many[-4:])
    assert _EmbeddingsHandler.requests == []


def test_cache_bounds_from_the_environment(embeddings_server, tmp_path, monkeypatch):
    monkeypatch.setenv("SWITCHLLM_CACHE_MAX_ENTRIES", "lots")
    with pytest.raises(EmbeddingError, match="SWITCHLLM_CACHE_MAX_ENTRIES must be a whole number"):
        CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path)
    monkeypatch.setenv("SWITCHLLM_CACHE_MAX_ENTRIES", "2")
    cache = CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path,
                           use_shipped=False)
    cache.embed(["x", "y", "z"])
    assert len(cache) == 2


def test_running_process_keeps_the_disk_cache_bounded(embeddings_server, tmp_path, monkeypatch):
    """A server that runs for ever embedding new prompts must not fill the disk: once its shards
    hold twice the cache, they are rewritten as the LRU (found by bench/probe.py)."""
    from safetensors.numpy import load_file

    monkeypatch.setattr(CachedEmbedder, "FLUSH_ROWS", 2)
    cache = CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path,
                           use_shipped=False, max_entries=4)
    for i in range(40):
        cache.embed([f"unique {i}"])
        on_disk = sum(len(load_file(str(p))["keys"]) for p in tmp_path.rglob("*.safetensors"))
        assert on_disk <= 2 * 4 + CachedEmbedder.FLUSH_ROWS
    _EmbeddingsHandler.requests = []
    CachedEmbedder(OpenAIEmbedder("m", base_url=embeddings_server), cache_dir=tmp_path,
                   use_shipped=False, max_entries=4).embed(["unique 39", "unique 38"])
    assert _EmbeddingsHandler.requests == []  # the newest survived the compactions


def _few_shot(question: str) -> str:
    examples = "\n\n".join(
        f"Which of these is a {kind}?\nA) oak\nB) granite\nC) salmon\nD) copper\nAnswer: "
        f"{answer}" for kind, answer in (("tree", "A"), ("rock", "B"), ("fish", "C"),
                                          ("metal", "D")) * 6)
    return f"{examples}\n\n{question}\nAnswer:"


def test_head_tail_embedder_reads_the_question_at_the_end_of_a_long_prompt(tmp_path):
    from switchllm.embeddings import HeadTailEmbedder, tail_text

    local = LocalEmbedder()
    base = CachedEmbedder(local, cache_dir=tmp_path, use_shipped=False)
    tail = HeadTailEmbedder(base, local)
    bread = "How do I bake sourdough bread at home?"
    primes = "Prove there are infinitely many primes."
    long_bread, long_primes = _few_shot(bread), _few_shot(primes)
    assert local.truncates([bread, long_bread]).tolist() == [False, True]
    assert tail_text(long_bread) == f"{bread}\nAnswer:"
    # the encoder reads 256 tokens: the shared examples alone, so both questions look the same
    head = base.embed([long_bread, long_primes])
    assert head[0] @ head[1] > 0.99
    vectors = tail.embed([bread, long_bread, long_primes])
    assert np.allclose(vectors[0], base.embed([bread])[0])  # short: the base embedding
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[1] @ vectors[2] < 0.9
    plain = base.embed([bread, primes])
    assert vectors[1] @ plain[0] > vectors[1] @ plain[1] + 0.1


def test_tail_text_falls_back_to_the_last_characters():
    from switchllm.embeddings import TAIL_CHARS, tail_text

    text = "x " * 2000
    assert tail_text(text) == text.rstrip()[-TAIL_CHARS:]
    assert tail_text("intro\n\n   \n\nquestion?  ") == "question?"


def test_shipped_tail_store_covers_every_long_shipped_prompt():
    """The `+tail` store holds the long shipped prompts; every other shipped prompt comes from
    the base store, which is only right if it is short (the encoder reads all of it)."""
    from switchllm.data.benchmarks import load_benchmark
    from switchllm.embeddings import LOCAL_MODEL, LOCAL_TAIL_MODEL, shipped_store, text_key

    prompts = load_benchmark("routerbench").prompts[::3]
    local = LocalEmbedder()
    layered, base = shipped_store(LOCAL_TAIL_MODEL), shipped_store(LOCAL_MODEL)
    cut = local.truncates(prompts)
    assert cut.any() and not cut.all()
    for prompt, long in zip(prompts, cut, strict=True):
        key = text_key(prompt)
        assert (layered.top.get(key) is not None) == bool(long)
        assert layered.get(key) is not None and base.get(key) is not None
