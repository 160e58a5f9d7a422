"""Shared base for routers that work on prompt embeddings (sw_ranking, mf, knn).

An embedding router records the embedding model it was trained with (`embedding_model`, on the
card) and the vector size (`embedding_dim`), and refuses to run on vectors from anything else:
vectors from two embedding models live in unrelated spaces, so mixing them routes at random
without any visible error.

With `text_features` > 0 the router's input for a prompt is its embedding followed by a few
cheap text features (`switchllm.routers.text_features`: length, numbers, lines, words),
standardised on the training prompts and scaled by `text_features`. Embeddings say what a prompt
is about; the features add how big and how numeric it is, which tracks difficulty within a topic
(5-fold CV APGR, GPT-4 vs Mixtral, knn: GSM8K 0.613 -> 0.647, MMLU 0.673 -> 0.685). Similarity
between inputs (knn, sw_ranking) is then cosine similarity of the embeddings minus half the
squared distance of the scaled features: for unit embeddings, 1 - |x - x'|^2 / 2 of the whole
input vector, so the weight trades feature distance against topic distance.

Every method that takes prompts has a `*_from_embeddings` twin taking a precomputed input matrix
(`router.embed(prompts)`, or `router.embed(prompts, embeddings)` to add the text features to
embedding-model vectors you already have), so evaluation and the server can embed a batch once
and ask several routers or pairs.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from switchllm.errors import CardError, DataError
from switchllm.routers.base import Router
from switchllm.routers.text_features import FEATURE_NAMES, TextFeatureScaler

if TYPE_CHECKING:
    from switchllm.data.battles import Battles
    from switchllm.embeddings import Embedder


class EmbeddingRouter(Router):
    """A router whose input is the prompt's embedding (plus, optionally, text features)."""

    #: True when win_rate(q, a, b) == sigmoid(score_a - score_b) of `model_scores`: one
    #: scoring pass then answers every pair (used to validate on many pairs at once)
    scores_are_logits: ClassVar[bool] = False

    def __init__(self, embedding_model: str | None = None, text_features: float = 0.0) -> None:
        from switchllm.embeddings import LOCAL_TAIL_MODEL

        super().__init__()
        self.embedding_model = embedding_model or LOCAL_TAIL_MODEL
        # scale of the standardised text features appended to the embedding; 0 = none
        self.text_features = float(text_features)
        if not np.isfinite(self.text_features) or self.text_features < 0:
            raise ValueError(f"text_features must be >= 0, got {text_features}")
        self.embedding_dim = 0  # embedding-model dimension, set by fit / the card; 0 = untrained
        self._feature_scaler: TextFeatureScaler | None = None
        # Save training-prompt vectors as references into the shipped embedding store (text
        # keys) instead of copies: the shipped default cards share the store's vectors.
        self.share_shipped_embeddings = False
        self._prompt_keys: np.ndarray | None = None

    # ---- embeddings ------------------------------------------------------------------------
    def embedder(self) -> Embedder:
        from switchllm.embeddings import get_embedder

        embedder = get_embedder(self.embedding_model)
        self.check_embedder(embedder)
        return embedder

    def check_embedder(self, embedder: Embedder) -> None:
        """Refuse an embedder other than the one this router was trained with."""
        if embedder.name != self.embedding_model:
            raise CardError(
                f"the {self.kind} router was trained on {self.embedding_model!r} embeddings, "
                f"not {embedder.name!r}; embed with {self.embedding_model!r} or retrain"
            )

    @property
    def n_text_features(self) -> int:
        return len(FEATURE_NAMES) if self.text_features > 0 else 0

    @property
    def input_dim(self) -> int:
        """Width of the router's input vectors: embedding plus text features."""
        return self.embedding_dim + self.n_text_features

    def embed(self, prompts: Sequence[str], embeddings: np.ndarray | None = None,
              progress: bool = False) -> np.ndarray:
        """Prompts -> the router's (n, input_dim) float32 input vectors: their embeddings from
        this router's embedding model (or the given precomputed `embeddings`, one row per
        prompt), followed by the scaled text features when `text_features` > 0."""
        for i, prompt in enumerate(prompts):
            if not isinstance(prompt, str):
                raise DataError(f"prompt {i} is {type(prompt).__name__}, not text")
        if embeddings is None:
            embeddings = self.embedder().embed(list(prompts), progress=progress)
        embeddings = self._check_matrix(embeddings, self.embedding_dim, "embeddings")
        if len(embeddings) != len(prompts):
            raise DataError(f"{len(embeddings)} embeddings for {len(prompts)} prompts")
        return self._with_text_features(prompts, embeddings)

    def _with_text_features(self, prompts: Sequence[str], embeddings: np.ndarray) -> np.ndarray:
        if self._feature_scaler is None:
            return embeddings
        features = self._feature_scaler.transform(prompts) * np.float32(self.text_features)
        return np.hstack([embeddings, features]).astype(np.float32)

    def check_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Validate a precomputed input matrix (`embed`'s output): 2-D, float32, the trained
        width."""
        return self._check_matrix(embeddings, self.input_dim, "input vectors")

    def _check_matrix(self, matrix: np.ndarray, width: int, what: str) -> np.ndarray:
        matrix = np.asarray(matrix, dtype=np.float32)
        if matrix.ndim != 2:
            raise DataError(f"{what} must be a 2-D matrix, got shape {matrix.shape}")
        if not self.embedding_dim:
            raise CardError(f"the {self.kind} router is not trained: call fit() first")
        if matrix.shape[1] != width:
            extra = (f" plus {self.n_text_features} text features (use router.embed(prompts, "
                     "embeddings) to add them)" if self.n_text_features else "")
            raise CardError(
                f"the {self.kind} router was trained on {self.embedding_dim}-dimensional "
                f"{self.embedding_model!r} embeddings{extra}: {what} need {width} columns, got "
                f"{matrix.shape[1]}"
            )
        return matrix

    def similarity(self, queries: np.ndarray, references: np.ndarray) -> np.ndarray:
        """(Q, R) similarity of input vectors: embedding cosine minus half the squared distance
        of the text features (for unit embeddings, 1 - |x - x'|^2 / 2)."""
        d = self.embedding_dim
        sims = queries[:, :d] @ references[:, :d].T
        if self.n_text_features:
            q, r = queries[:, d:], references[:, d:]
            squared = ((q * q).sum(axis=1)[:, None] + (r * r).sum(axis=1)[None, :]
                       - 2.0 * (q @ r.T))
            sims -= 0.5 * np.maximum(squared, 0.0)
        return sims

    def card_precision(self, vectors: np.ndarray) -> np.ndarray:
        """Input vectors as a card stores them (embeddings in float16): rounding at fit time
        makes a loaded card answer exactly like the router that saved it."""
        out = np.array(vectors, dtype=np.float32)
        d = self.embedding_dim
        out[:, :d] = out[:, :d].astype(np.float16).astype(np.float32)
        return out

    # ---- the Router interface, via embeddings ----------------------------------------------
    def fit(self, battles: Battles, embeddings: np.ndarray | None = None,
            progress: bool = False) -> EmbeddingRouter:
        """Learn from `battles`; `embeddings` (the embedding model's vectors, one row per
        `battles.prompts`, without text features) skips embedding."""
        if len(battles) == 0:
            raise DataError("no battles to train on")
        if embeddings is None:
            embeddings = self.embedder().embed(battles.prompts, progress=progress)
        embeddings = np.asarray(embeddings, dtype=np.float32)
        if embeddings.shape[0] != len(battles.prompts):
            raise DataError(
                f"{embeddings.shape[0]} embeddings for {len(battles.prompts)} prompts"
            )
        if embeddings.ndim != 2:
            raise DataError(f"embeddings must be a 2-D matrix, got shape {embeddings.shape}")
        self.embedding_dim = int(embeddings.shape[1])
        self.models = list(battles.models)
        self._prompt_keys = _text_keys(battles.prompts)
        self._feature_scaler = (TextFeatureScaler.fit(battles.prompts)
                                if self.text_features > 0 else None)
        inputs = self._with_text_features(battles.prompts, embeddings)
        self._fit_embeddings(battles, inputs, progress=progress)
        return self

    def win_rate(
        self, prompts: Sequence[str], strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        strong, weak = self.resolve_pair(strong, weak)
        if len(prompts) == 0:
            return np.zeros(0)
        return self.win_rate_from_embeddings(self.embed(prompts), strong, weak)

    def model_scores(self, prompts: Sequence[str]) -> np.ndarray:
        if len(prompts) == 0:
            return np.zeros((0, len(self.models)))
        return self.model_scores_from_embeddings(self.embed(prompts))

    def win_rate_from_embeddings(
        self, embeddings: np.ndarray, strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        """P(strong beats weak) for each row of a precomputed input matrix (`embed`)."""
        strong, weak = self.resolve_pair(strong, weak)
        embeddings = self.check_embeddings(embeddings)
        index = {m: i for i, m in enumerate(self.models)}
        rates = self._win_rate(embeddings, index[strong], index[weak])
        return np.clip(np.asarray(rates, dtype=np.float64), 0.0, 1.0)

    def model_scores_from_embeddings(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-model scores (n, len(models)) for a precomputed input matrix (`embed`)."""
        return np.asarray(self._model_scores(self.check_embeddings(embeddings)), np.float64)

    # ---- what subclasses implement ---------------------------------------------------------
    @abstractmethod
    def _fit_embeddings(self, battles: Battles, embeddings: np.ndarray,
                        progress: bool = False) -> None:
        """Learn from battles whose prompts have the given input vectors (L2-normalised
        embeddings, then any text features)."""

    @abstractmethod
    def _win_rate(self, embeddings: np.ndarray, strong: int, weak: int) -> np.ndarray:
        """P(models[strong] beats models[weak]) per embedding row."""

    @abstractmethod
    def _model_scores(self, embeddings: np.ndarray) -> np.ndarray:
        """Per-model scores per embedding row."""

    # ---- persistence -----------------------------------------------------------------------
    @classmethod
    def from_card(cls, card: dict[str, Any], tensors: dict[str, np.ndarray]) -> Router:
        # cards written before text features existed have no such parameter: they used none
        params = card.get("params", {})
        if "text_features" in cls.params and "text_features" not in params:
            card = {**card, "params": {**params, "text_features": 0.0}}
        return super().from_card(card, tensors)

    def _get_state(self) -> dict[str, np.ndarray]:
        state = {"embedding_dim": np.array([self.embedding_dim], dtype=np.int64)}
        if self._feature_scaler is not None:
            state["text_feature_mean"] = self._feature_scaler.mean
            state["text_feature_std"] = self._feature_scaler.std
        return state

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        if "embedding_dim" not in tensors:
            raise CardError(f"{self.kind} router card has no 'embedding_dim' tensor")
        self.embedding_dim = int(tensors["embedding_dim"][0])
        self._feature_scaler = None
        if self.text_features > 0:
            mean, std = require(tensors, self.kind, "text_feature_mean", "text_feature_std")
            if mean.shape != (len(FEATURE_NAMES),) or std.shape != mean.shape:
                raise CardError(f"{self.kind} router card has {mean.shape} text-feature "
                                f"statistics; this switchllm computes {len(FEATURE_NAMES)}")
            self._feature_scaler = TextFeatureScaler(mean, std)

    def _prompt_vectors_state(self, vectors: np.ndarray) -> dict[str, np.ndarray]:
        """Training-prompt input vectors for the card: embeddings as float16 copies, or with
        `share_shipped_embeddings` and every prompt in the shipped store, only their keys;
        text features (small) as float32 copies."""
        from switchllm.embeddings import shipped_store

        store = shipped_store(self.embedding_model)
        keys = self._prompt_keys
        d = self.embedding_dim
        state = {}
        if self.n_text_features:
            state["prompt_features"] = np.ascontiguousarray(vectors[:, d:], dtype=np.float32)
        if (self.share_shipped_embeddings and store is not None and keys is not None
                and all(store.get(k.tobytes()) is not None for k in keys)):
            return {**state, "prompt_keys": keys}
        return {**state, "prompt_vectors": vectors[:, :d].astype(np.float16)}

    def _load_prompt_vectors(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        """The training-prompt input vectors of a card: embeddings inline or from the shipped
        store, then any text features."""
        embeddings = self._load_prompt_embeddings(tensors)
        if not self.n_text_features:
            return embeddings
        (features,) = require(tensors, self.kind, "prompt_features")
        if features.shape != (len(embeddings), self.n_text_features):
            raise CardError(f"{self.kind} router card has prompt_features of shape "
                            f"{features.shape} for {len(embeddings)} prompts")
        return np.ascontiguousarray(np.hstack([embeddings, features]), dtype=np.float32)

    def _load_prompt_embeddings(self, tensors: dict[str, np.ndarray]) -> np.ndarray:
        from switchllm.embeddings import shipped_store

        if "prompt_vectors" in tensors:
            return np.ascontiguousarray(tensors["prompt_vectors"], dtype=np.float32)
        (keys,) = require(tensors, self.kind, "prompt_keys")
        store = shipped_store(self.embedding_model)
        rows = [store.get(k.tobytes()) for k in keys] if store is not None else [None]
        if any(row is None for row in rows):
            raise CardError(
                f"this {self.kind} card refers to shipped {self.embedding_model!r} embeddings "
                "that this switchllm installation does not have; retrain the router"
            )
        self._prompt_keys = keys
        return np.ascontiguousarray(np.stack(rows), dtype=np.float32)


def _text_keys(texts: Sequence[str]) -> np.ndarray:
    from switchllm.embeddings import KEY_BYTES, text_key

    joined = b"".join(text_key(t) for t in texts)
    return np.frombuffer(joined, dtype=np.uint8).reshape(-1, KEY_BYTES).copy()


def require(tensors: dict[str, np.ndarray], kind: str, *names: str) -> list[np.ndarray]:
    """The named tensors of a card, or a CardError naming the missing ones."""
    missing = [n for n in names if n not in tensors]
    if missing:
        raise CardError(f"{kind} router card is missing tensors: {', '.join(missing)}")
    return [tensors[n] for n in names]


class PromptPairOutcomes:
    """Battle outcomes summed per (prompt, model pair): the sufficient statistics of sw_ranking
    and knn, stored sparsely (real data has few of all possible pairs on each prompt).

    Pair k is models (pair_a[k], pair_b[k]) with pair_a < pair_b, only pairs seen in training.
    Row r says: on prompt `row_prompt[r]`, pair `row_pair[r]` fought `row_counts[r]` (weighted)
    battles and pair_a won `row_wins[r]` of them, ties counting half. Rows are sorted by pair;
    the rows of pair k are `pair_start[k]:pair_start[k + 1]`."""

    def __init__(self, n_models: int, pair_a: np.ndarray, pair_b: np.ndarray,
                 row_prompt: np.ndarray, row_pair: np.ndarray, row_wins: np.ndarray,
                 row_counts: np.ndarray) -> None:
        self.n_models = n_models
        self.pair_a = np.asarray(pair_a, dtype=np.int64)
        self.pair_b = np.asarray(pair_b, dtype=np.int64)
        self.row_prompt = np.asarray(row_prompt, dtype=np.int64)
        self.row_pair = np.asarray(row_pair, dtype=np.int64)
        self.row_wins = np.asarray(row_wins, dtype=np.float32)
        self.row_counts = np.asarray(row_counts, dtype=np.float32)
        self.pair_start = np.searchsorted(self.row_pair, np.arange(len(self.pair_a) + 1))
        self.pair_index = np.full((n_models, n_models), -1, dtype=np.int64)
        self.pair_index[self.pair_a, self.pair_b] = np.arange(len(self.pair_a))
        self.pair_index[self.pair_b, self.pair_a] = np.arange(len(self.pair_a))
        # (pairs, models) incidence: +1 for pair_a, -1 for pair_b
        self.incidence = np.zeros((len(self.pair_a), n_models))
        self.incidence[np.arange(len(self.pair_a)), self.pair_a] = 1.0
        self.incidence[np.arange(len(self.pair_a)), self.pair_b] = -1.0

    @classmethod
    def from_battles(cls, battles: Battles) -> PromptPairOutcomes:
        keep = battles.model_a != battles.model_b
        a, b = battles.model_a[keep], battles.model_b[keep]
        if len(a) == 0:
            raise DataError("no battle between two different models to learn from")
        lo, hi = np.minimum(a, b), np.maximum(a, b)
        outcome = battles.outcome[keep].astype(np.float64)
        weight = battles.weight[keep].astype(np.float64)
        # outcome is P(model_a wins): flip it where model_a is the higher-indexed model
        lower_wins = np.where(a < b, outcome, 1.0 - outcome) * weight
        n_models = len(battles.models)
        pair_code = lo * n_models + hi
        codes, pair_of_battle = np.unique(pair_code, return_inverse=True)
        n_prompts = len(battles.prompts)
        row_code = pair_of_battle * n_prompts + battles.prompt_idx[keep]
        rows, row_of_battle = np.unique(row_code, return_inverse=True)  # sorted by pair
        wins = np.bincount(row_of_battle, lower_wins, minlength=len(rows))
        counts = np.bincount(row_of_battle, weight, minlength=len(rows))
        return cls(n_models, codes // n_models, codes % n_models, rows % n_prompts,
                   rows // n_prompts, wins, counts)

    @property
    def n_pairs(self) -> int:
        return len(self.pair_a)

    def state(self, prefix: str = "") -> dict[str, np.ndarray]:
        return {prefix + "pair_a": self.pair_a, prefix + "pair_b": self.pair_b,
                prefix + "row_prompt": self.row_prompt, prefix + "row_pair": self.row_pair,
                prefix + "row_wins": self.row_wins, prefix + "row_counts": self.row_counts}

    @classmethod
    def from_state(cls, tensors: dict[str, np.ndarray], n_models: int, kind: str,
                   prefix: str = "") -> PromptPairOutcomes:
        names = ["pair_a", "pair_b", "row_prompt", "row_pair", "row_wins", "row_counts"]
        arrays = require(tensors, kind, *(prefix + n for n in names))
        return cls(n_models, *arrays)

    def pair_rows(self, strong: int, weak: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(prompt, wins of strong over weak, battles) for every prompt where they met."""
        k = self.pair_index[strong, weak]
        if k < 0:
            empty = np.zeros(0)
            return empty.astype(np.int64), empty, empty
        rows = slice(self.pair_start[k], self.pair_start[k + 1])
        wins, counts = self.row_wins[rows], self.row_counts[rows]
        if strong > weak:
            wins = counts - wins
        return self.row_prompt[rows], wins.astype(np.float64), counts.astype(np.float64)

    def model_outcomes(self, n_prompts: int) -> tuple[np.ndarray, np.ndarray]:
        """Per (prompt, model): summed outcome (wins, ties half) and battle count."""
        wins = np.zeros((n_prompts, self.n_models))
        counts = np.zeros((n_prompts, self.n_models))
        a, b = self.pair_a[self.row_pair], self.pair_b[self.row_pair]
        np.add.at(wins, (self.row_prompt, a), self.row_wins)
        np.add.at(wins, (self.row_prompt, b), self.row_counts - self.row_wins)
        np.add.at(counts, (self.row_prompt, a), self.row_counts)
        np.add.at(counts, (self.row_prompt, b), self.row_counts)
        return wins, counts


class PromptMemoryRouter(EmbeddingRouter):
    """An embedding router that keeps its training prompts' vectors and their battle outcomes
    (`PromptPairOutcomes`) and answers from the prompts most similar to the query: knn and
    sw_ranking. Subclasses set up their search structures in `_prepare`."""

    def __init__(self, embedding_model: str | None = None, text_features: float = 0.0) -> None:
        super().__init__(embedding_model, text_features)
        self._prompt_vectors = np.zeros((0, 0), dtype=np.float32)
        self._outcomes: PromptPairOutcomes | None = None

    def _fit_embeddings(self, battles: Battles, embeddings: np.ndarray,
                        progress: bool = False) -> None:
        # stored as float16 on the card: round now so a loaded card answers identically
        self._prompt_vectors = self.card_precision(embeddings)
        self._outcomes = PromptPairOutcomes.from_battles(battles)
        self._split_memory()
        self._prepare()

    def _split_memory(self) -> None:
        # Contiguous copies of the embedding and feature columns: a matrix product on a column
        # slice of the stored vectors copies the whole memory on every call.
        d = self.embedding_dim
        self._memory_embeddings = np.ascontiguousarray(self._prompt_vectors[:, :d])
        self._memory_features = np.ascontiguousarray(self._prompt_vectors[:, d:])
        self._memory_feature_norms = (self._memory_features ** 2).sum(axis=1)

    def memory_similarity(self, queries: np.ndarray) -> np.ndarray:
        """`similarity(queries, training prompts)`, from the cached contiguous columns."""
        d = self.embedding_dim
        sims = queries[:, :d] @ self._memory_embeddings.T
        if self.n_text_features:
            q = queries[:, d:]
            squared = ((q * q).sum(axis=1)[:, None] + self._memory_feature_norms[None, :]
                       - 2.0 * (q @ self._memory_features.T))
            sims -= 0.5 * np.maximum(squared, 0.0)
        return sims

    @abstractmethod
    def _prepare(self) -> None:
        """Derive search structures from `_prompt_vectors` and `_outcomes` (after fit/load)."""

    def _get_state(self) -> dict[str, np.ndarray]:
        assert self._outcomes is not None, "fit the router before saving it"
        return {**super()._get_state(),
                **self._prompt_vectors_state(self._prompt_vectors),
                **self._outcomes.state()}

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        super()._set_state(tensors)
        self._prompt_vectors = self._load_prompt_vectors(tensors)
        self._outcomes = PromptPairOutcomes.from_state(tensors, len(self.models), self.kind)
        self._split_memory()
        self._prepare()


def bradley_terry(
    wins: np.ndarray, counts: np.ndarray, incidence: np.ndarray, reg: float = 1.0,
    n_iter: int = 10,
) -> np.ndarray:
    """Batched Bradley-Terry fit by Newton's method.

    `wins`/`counts` are (Q, K): for each of Q independent problems, the weighted wins of pair k's
    first model and the weighted battles of pair k; `incidence` (K, M) has +1/-1 for the pair's
    first/second model. Maximises sum_k [wins log p_k + (counts - wins) log(1 - p_k)] -
    reg/2 |r|^2 with p_k = sigmoid(r_a - r_b). The L2 term fixes the free offset and keeps
    models without battles at 0. Returns ratings (Q, M) in logits (natural-log scale)."""
    wins = np.asarray(wins, dtype=np.float64)
    counts = np.asarray(counts, dtype=np.float64)
    q, m = wins.shape[0], incidence.shape[1]
    pos = incidence.argmax(axis=1)
    neg = incidence.argmin(axis=1)
    abs_inc = np.abs(incidence)
    ratings = np.zeros((q, m))
    eye = np.eye(m) * reg
    for _ in range(n_iter):
        logits = ratings @ incidence.T
        p = 1.0 / (1.0 + np.exp(-logits))
        grad = (counts * p - wins) @ incidence + reg * ratings
        h = counts * p * (1.0 - p)
        hess = np.broadcast_to(eye, (q, m, m)).copy()
        hess[:, np.arange(m), np.arange(m)] += h @ abs_inc
        hess[:, pos, neg] -= h
        hess[:, neg, pos] -= h
        ratings -= np.linalg.solve(hess, grad[..., None])[..., 0]
    return ratings
