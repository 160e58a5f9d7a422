"""The router interface every router implements, and router cards (a router on disk).

A router answers one question, batched: for each prompt, how likely is the `strong` model to
beat the `weak` one (RouteLLM's "strong win rate")? A request goes to the strong model when that
win rate is at least the request's threshold. Routers that learn per-model quality can also score
every model they know (`model_scores`).

A router card is a directory holding `router.json` (type, hyper-parameters, known models, embedding
model, training-data fingerprint, validation metrics, calibration quantiles) and
`weights.safetensors`. Loading reads JSON and tensors only; it never executes code from the files.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from switchllm.errors import CardError, UnknownModelError

if TYPE_CHECKING:
    from switchllm.data.battles import Battles

CARD_FORMAT_VERSION = 1
CARD_JSON = "router.json"
CARD_WEIGHTS = "weights.safetensors"

# The pair RouteLLM trained and evaluated on; the default everywhere a pair must be chosen.
DEFAULT_STRONG_MODEL = "gpt-4-1106-preview"
DEFAULT_WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"

# Win-rate quantiles stored on each card so a target strong-call share maps to a threshold.
CALIBRATION_LEVELS = np.round(np.linspace(0.0, 1.0, 101), 2)


class Router(ABC):
    """Base class. Subclasses set `kind`, take plain keyword hyper-parameters in `__init__`
    (stored as attributes of the same name, as scikit-learn estimators do), implement
    `win_rate`, and, if they learn anything, `fit`, `_get_state` and `_set_state`."""

    kind: ClassVar[str]
    #: hyper-parameter names accepted by __init__ and saved on the card
    params: ClassVar[tuple[str, ...]] = ()

    def __init__(self) -> None:
        self.models: list[str] = []  # models the router can score; empty: any pair
        self.default_pair: tuple[str, str] = (DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL)
        self.embedding_model: str | None = None
        self.card_info: dict[str, Any] = {}  # fingerprint, validation metrics, calibration...

    # ---- the interface -------------------------------------------------------------------
    def fit(self, battles: Battles, progress: bool = False) -> Router:
        """Learn from pairwise battles (with a progress bar if `progress`). Returns self.
        Routers that learn nothing ignore it."""
        return self

    @abstractmethod
    def win_rate(
        self, prompts: Sequence[str], strong: str | None = None, weak: str | None = None
    ) -> np.ndarray:
        """P(strong beats weak) per prompt, shape (len(prompts),), values in [0, 1].

        `strong`/`weak` default to the router's `default_pair`."""

    def model_scores(self, prompts: Sequence[str]) -> np.ndarray:
        """Per-model quality scores, shape (len(prompts), len(self.models)); higher is better.
        Only routers that learn per-model quality implement it."""
        raise NotImplementedError(f"the {self.kind} router does not score individual models")

    # ---- helpers for subclasses --------------------------------------------------------------
    def resolve_pair(self, strong: str | None, weak: str | None) -> tuple[str, str]:
        strong = strong or self.default_pair[0]
        weak = weak or self.default_pair[1]
        if self.models:
            for model in (strong, weak):
                if model not in self.models:
                    raise UnknownModelError(
                        f"the {self.kind} router does not know model {model!r}; "
                        f"it knows: {', '.join(self.models)}",
                        short=f"the {self.kind} router does not know model {model!r} "
                              f"(it knows {len(self.models)} models)",
                    )
        if strong == weak:
            raise UnknownModelError(f"strong and weak model are the same: {strong!r}")
        return strong, weak

    def get_params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.params}

    def threshold_for_strong_share(self, share: float, calibration_set: str | None = None
                                   ) -> float:
        """The threshold that sends about `share` of calls to the strong model, from the
        calibration quantiles stored on the card (or those of one `calibration_set`, e.g.
        "arena-hard", kept under `calibration_sets`)."""
        if not 0.0 <= share <= 1.0:
            raise ValueError(f"strong share must be in [0, 1], got {share}")
        calibration = self.card_info.get("calibration", {})
        if calibration_set is not None:
            sets = self.card_info.get("calibration_sets", {})
            if calibration_set not in sets:
                raise CardError(f"the {self.kind} router card has no calibration set "
                                f"{calibration_set!r}; it has: {', '.join(sets) or 'none'}")
            calibration = sets[calibration_set]
        quantiles = calibration.get("quantiles")
        if not quantiles:
            raise CardError(f"the {self.kind} router has no calibration quantiles on its card")
        levels = np.asarray(calibration["levels"], dtype=float)
        return float(np.interp(1.0 - share, levels, np.asarray(quantiles, dtype=float)))

    # ---- RouteLLM's single-prompt interface ------------------------------------------------
    def calculate_strong_win_rate(self, prompt: str) -> float:
        """RouteLLM's name: the strong win rate of one prompt, for the default pair."""
        return float(np.asarray(self.win_rate([prompt])).reshape(-1)[0])

    def route(self, prompt: str, threshold: float, routed_pair: Any) -> str:
        """RouteLLM's rule: `routed_pair.strong` when the strong win rate reaches `threshold`,
        else `routed_pair.weak` (`routed_pair` has `strong` and `weak`, like ModelPair)."""
        from switchllm.serving.routing import choose, router_pair

        strong, weak = router_pair(self, routed_pair.strong, routed_pair.weak)
        rate = float(np.asarray(self.win_rate([prompt], strong, weak)).reshape(-1)[0])
        return choose(rate, threshold, routed_pair.strong, routed_pair.weak)

    def calibrate(self, prompts: Sequence[str]) -> None:
        """Store win-rate quantiles of `prompts` (default pair) for `threshold_for_strong_share`."""
        rates = self.win_rate(prompts)
        self.card_info["calibration"] = {
            "pair": list(self.default_pair),
            "levels": CALIBRATION_LEVELS.tolist(),
            "quantiles": np.quantile(rates, CALIBRATION_LEVELS).round(6).tolist(),
            "n_prompts": len(prompts),
        }

    # ---- persistence (router cards) ------------------------------------------------------------
    def _get_state(self) -> dict[str, np.ndarray]:
        """Learned tensors to store in weights.safetensors."""
        return {}

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:  # noqa: B027 - optional hook
        """Restore learned tensors read from weights.safetensors."""

    def save(self, directory: str | Path) -> Path:
        from safetensors.numpy import save_file

        directory = Path(directory)
        try:
            directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CardError(f"cannot create router card directory {directory}: {exc}") from exc
        card = {
            "format_version": CARD_FORMAT_VERSION,
            "type": self.kind,
            "params": self.get_params(),
            "models": self.models,
            "default_pair": list(self.default_pair),
            "embedding_model": self.embedding_model,
            **self.card_info,
        }
        tensors = {k: np.ascontiguousarray(v) for k, v in self._get_state().items()}
        # Write to temporary names, then rename: a crash never leaves half a card behind.
        tmp_weights = directory / (CARD_WEIGHTS + ".tmp")
        tmp_json = directory / (CARD_JSON + ".tmp")
        save_file(tensors, str(tmp_weights))
        tmp_json.write_text(json.dumps(card, indent=2, default=_json_default) + "\n")
        tmp_weights.replace(directory / CARD_WEIGHTS)
        tmp_json.replace(directory / CARD_JSON)
        return directory

    @classmethod
    def from_card(cls, card: dict[str, Any], tensors: dict[str, np.ndarray]) -> Router:
        params = card.get("params", {})
        unknown = set(params) - set(cls.params)
        if unknown:
            raise CardError(f"router card has unknown {cls.kind} parameters: {sorted(unknown)}")
        router = cls(**params)
        router.models = list(card.get("models", []))
        pair = card.get("default_pair") or [DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL]
        router.default_pair = (pair[0], pair[1])
        router.embedding_model = card.get("embedding_model")
        skip = {"format_version", "type", "params", "models", "default_pair", "embedding_model"}
        router.card_info = {k: v for k, v in card.items() if k not in skip}
        router._set_state(tensors)
        return router


def read_card(directory: str | Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read router.json and weights.safetensors from a card directory (data only, no code)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    directory = Path(directory)
    json_path = directory / CARD_JSON
    if not json_path.is_file():
        raise CardError(f"{directory} is not a router card: {CARD_JSON} is missing")
    try:
        card = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CardError(f"{json_path} is not valid JSON: {exc}") from exc
    if not isinstance(card, dict) or "type" not in card:
        raise CardError(f"{json_path} has no router 'type'")
    if card.get("format_version", 1) > CARD_FORMAT_VERSION:
        raise CardError(
            f"{json_path} was written by a newer switchllm (format {card['format_version']})"
        )
    weights_path = directory / CARD_WEIGHTS
    tensors: dict[str, np.ndarray] = {}
    if weights_path.is_file():
        try:
            tensors = load_file(str(weights_path))
        except (SafetensorError, OSError, ValueError) as exc:
            raise CardError(f"{weights_path} is not a valid safetensors file: {exc}") from exc
    return card, tensors


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot store {type(value).__name__} in router.json")
