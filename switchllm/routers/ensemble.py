"""The ensemble router: other router cards' win rates combined by weights learned on held-out data.

For a pair (a, b) each member m gives its win rate p_m(a, b); the ensemble answers

    P(a beats b | prompt) = sigmoid(sum_m w_m * logit(p_m(a, b)))

a logistic regression ("stacking") on the members' logits with no intercept, so the ensemble is
as antisymmetric as its members (P(a, b) = 1 - P(b, a)) and one set of weights serves every pair.
The weights are fitted by Newton's method on weighted binary cross-entropy (ties are 0.5 targets)
with an L2 penalty `l2`, and kept non-negative: a member whose weight comes out negative is
dropped and the rest refitted (with few held-out battles, a negative weight on a correlated
member is noise, not signal).

The data the weights are fitted on must be held out from every member: a member that memorised
its training prompts (knn) looks perfect on them and would take all the weight. Two ways:
- `train_members=False` (default): members are existing cards (a shipped default's name such as
  "knn", or a card directory), frozen; `fit(battles)` learns only the weights, so `battles` must
  be prompts no member trained on (`scripts/train_defaults.py ensemble` uses the prompts every
  shipped card held out for validation).
- `train_members=True`: `fit(battles)` cross-fits: it splits the prompts into `member_folds`
  folds, trains fresh members of the members' kinds on all folds but one and asks them about
  the one left out, fits the weights on those out-of-fold win rates of every battle, then
  retrains the members on all of `battles` (what `switchllm eval --cv` and `--leave-out` use).

The card (`router.json` + `weights.safetensors`) names its member cards and the SHA-256 of each
member's weights, and refuses to load a member that has changed since (retrained members make the
learned weights meaningless). Freshly trained members are saved inside the card, under
`members/`. A new kind becomes a member by name: `--members knn,mf,causal_llm`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from switchllm.errors import CardError, DataError, SwitchLLMError
from switchllm.routers.base import CARD_JSON, CARD_WEIGHTS, Router

if TYPE_CHECKING:
    from switchllm.data.battles import Battles

MEMBERS_DIR = "members"  # freshly trained members are saved here, inside the ensemble's card
EPS = 1e-4  # win rates are clipped to [EPS, 1 - EPS] before the logit


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def fit_stacking_weights(features: np.ndarray, targets: np.ndarray, weights: np.ndarray,
                         l2: float, n_iter: int = 50) -> np.ndarray:
    """Non-negative weights w minimising sum_i s_i BCE(sigmoid(x_i . w), y_i) + l2/2 |w|^2, with
    the battle weights s rescaled to sum to the number of battles (so `l2` is in battles).
    A member whose weight is negative at the optimum is set to 0 and the rest refitted."""
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    s = np.asarray(weights, dtype=np.float64)
    if x.ndim != 2 or len(x) != len(y) or len(y) != len(s):
        raise DataError(f"stacking features {x.shape} do not match {len(y)} targets")
    if len(y) == 0 or s.sum() <= 0:
        raise DataError("no battles to fit the ensemble's weights on")
    s = s * (len(s) / s.sum())
    active = np.ones(x.shape[1], dtype=bool)
    while True:
        w = np.zeros(x.shape[1])
        if active.any():
            w[active] = _newton_logistic(x[:, active], y, s, l2, n_iter)
        if (w >= 0).all():
            return w
        active &= w > 0  # drop the members with negative weight, refit the others


def _newton_logistic(x: np.ndarray, y: np.ndarray, s: np.ndarray, l2: float,
                     n_iter: int) -> np.ndarray:
    w = np.zeros(x.shape[1])
    eye = np.eye(x.shape[1]) * max(l2, 1e-8)  # a tiny ridge keeps collinear members solvable
    for _ in range(n_iter):
        p = 1.0 / (1.0 + np.exp(-(x @ w)))
        grad = x.T @ (s * (p - y)) + eye @ w
        hess = (x * (s * p * (1.0 - p))[:, None]).T @ x + eye
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return w


class EnsembleRouter(Router):
    kind = "ensemble"
    params: ClassVar[tuple[str, ...]] = ("members", "l2", "train_members", "member_folds",
                                         "seed")

    def __init__(self, members: Sequence[str] = ("knn", "mf", "sw_ranking"), l2: float = 1.0,
                 train_members: bool = False, member_folds: int = 5, seed: int = 0) -> None:
        super().__init__()
        if isinstance(members, str):
            members = [m for m in members.split(",") if m.strip()]
        self.members = [str(m).strip() for m in members]  # member card names or directories
        self.l2 = float(l2)
        self.train_members = bool(train_members)
        self.member_folds = int(member_folds)
        self.seed = int(seed)
        if not self.members:
            raise ValueError("an ensemble needs at least one member")
        if len(set(self.members)) != len(self.members):
            raise ValueError(f"ensemble members repeat: {self.members}")
        if "ensemble" in self.members:
            raise ValueError("an ensemble cannot be a member of an ensemble")
        if not np.isfinite(self.l2) or self.l2 < 0:
            raise ValueError(f"l2 must be >= 0, got {l2}")
        if self.member_folds < 2:
            raise ValueError(f"member_folds must be at least 2, got {member_folds}")
        self.weights = np.zeros(0)  # one per member; empty: not fitted
        self._routers: list[Router] | None = None  # loaded or trained members

    # ---- members -------------------------------------------------------------------------------
    def set_members(self, routers: Sequence[Router]) -> EnsembleRouter:
        """Use these (already trained) routers as the members, in `members` order."""
        if len(routers) != len(self.members):
            raise ValueError(f"{len(routers)} routers for {len(self.members)} members")
        self._routers = list(routers)
        self._update_models()
        return self

    def member_routers(self) -> list[Router]:
        if self._routers is None:
            self._routers = self._load_members()
            self._update_models()
        return self._routers

    def _update_models(self) -> None:
        assert self._routers is not None
        # Pairs every member can score; members that score any pair (empty lists) do not limit.
        known = [r.models for r in self._routers if r.models]
        self.models = ([m for m in known[0] if all(m in k for k in known[1:])] if known else [])

    def _load_members(self) -> list[Router]:
        from switchllm.routers import load_card
        from switchllm.routers.score_cache import weights_digest

        records = self.card_info.get("member_cards")
        if not records:  # not fitted yet: the members are existing cards, by name or directory
            if self.train_members:
                raise SwitchLLMError("the ensemble router trains its members: call fit() first"
                                     " or load a trained card")
            return [load_member(spec) for spec in self.members]
        if [r.get("name") for r in records] != self.members:
            raise CardError(f"ensemble card lists member cards {[r.get('name') for r in records]}"
                            f" for members {self.members}")
        routers = []
        for record in records:
            directory = member_directory(record, self.card_info.get("path"))
            digest = weights_digest(directory) if (directory / CARD_WEIGHTS).is_file() else ""
            if record.get("weights_sha256") and digest != record["weights_sha256"]:
                raise CardError(
                    f"ensemble member {record['name']!r} ({directory}) is not the card the "
                    "ensemble was fitted with (its weights changed): refit the ensemble "
                    "(`switchllm train ensemble --members ...`)")
            routers.append(load_card(directory))
        return routers

    # ---- the interface ---------------------------------------------------------------------
    def member_logits(self, prompts: Sequence[str], strong: str, weak: str) -> np.ndarray:
        """(len(prompts), members) logits of each member's strong win rate."""
        columns = [logit(r.win_rate(prompts, strong, weak)) for r in self.member_routers()]
        return np.stack(columns, axis=1) if columns else np.zeros((len(prompts), 0))

    def win_rate(self, prompts: Sequence[str], strong: str | None = None,
                 weak: str | None = None) -> np.ndarray:
        self._require_fitted()
        self.member_routers()  # the known models come from the members
        strong, weak = self.resolve_pair(strong, weak)
        if len(prompts) == 0:
            return np.zeros(0)
        return self.combine(self.member_logits(prompts, strong, weak))

    def combine(self, member_logits: np.ndarray) -> np.ndarray:
        """Win rates from member logits (`member_logits`' output)."""
        z = np.asarray(member_logits, dtype=np.float64) @ self.weights
        return 1.0 / (1.0 + np.exp(-z))

    def _require_fitted(self) -> None:
        if len(self.weights) != len(self.members):
            raise SwitchLLMError("the ensemble router is not fitted: call fit(battles) or load "
                                 "a trained card")

    def fit(self, battles: Battles, progress: bool = False) -> EnsembleRouter:
        """Learn the weights on `battles` (held out from every member); with `train_members`,
        first train the members on the rest of the prompts (then retrain them on all)."""
        if len(battles) == 0:
            raise DataError("no battles to train on")
        if not self.train_members:
            routers = self.member_routers()
            self.weights = self.fit_weights(routers, battles)
            return self
        # Cross-fitting: every prompt's member win rates come from members trained on the other
        # folds, so the weights are fitted on all of `battles`, none of it seen by its members.
        fold = prompt_folds(len(battles.prompts), self.member_folds, self.seed)
        parts = []
        for k in range(self.member_folds):
            routers = [train_member(spec, battles.select_prompts(fold != k), progress)
                       for spec in self.members]
            parts.append(stacking_features(routers, battles.select_prompts(fold == k)))
        x, y, s = (np.concatenate([part[i] for part in parts]) for i in range(3))
        self.weights = fit_stacking_weights(x, y, s, self.l2)
        self._record_fit(len(y), len(battles.prompts), self.weights)
        routers = [train_member(spec, battles, progress) for spec in self.members]
        self.set_members(routers)
        self.card_info["member_cards"] = [{"name": spec, "kind": r.kind}
                                          for spec, r in zip(self.members, routers, strict=True)]
        return self

    def fit_weights(self, routers: Sequence[Router], battles: Battles) -> np.ndarray:
        """Stacking weights of `routers` on `battles`; also records per-member validation
        log-loss on the card (`member_fit`)."""
        x, y, s = stacking_features(routers, battles)
        weights = fit_stacking_weights(x, y, s, self.l2)
        self._record_fit(len(y), len(battles.prompts), weights)
        self.set_members(routers)
        return weights

    def _record_fit(self, n_battles: int, n_prompts: int, weights: np.ndarray) -> None:
        self.card_info["member_fit"] = {
            "battles": n_battles, "prompts": n_prompts,
            "member_folds": self.member_folds if self.train_members else None,
            "weights": {m: round(float(w), 5) for m, w in zip(self.members, weights, strict=True)},
        }

    # ---- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write the card; members trained by `fit` are saved under `members/` first, and every
        member is recorded with the SHA-256 of its weights."""
        from switchllm.routers.score_cache import weights_digest

        self._require_fitted()
        directory = Path(directory)
        routers = self.member_routers()
        records = []
        for i, (spec, router) in enumerate(zip(self.members, routers, strict=True)):
            record: dict[str, Any] = {"name": spec, "kind": router.kind}
            source = router.card_info.get("path")
            if self.train_members or source is None:  # trained here: keep it with the ensemble
                relative = f"{MEMBERS_DIR}/{i}-{router.kind}"
                router.save(directory / relative)
                router.card_info["path"] = str(directory / relative)
                record["card"] = relative
                member_dir = directory / relative
            else:
                member_dir = Path(source)
                record["card"] = _member_reference(spec, member_dir)
            record["weights_sha256"] = (weights_digest(member_dir)
                                        if (member_dir / CARD_WEIGHTS).is_file() else "")
            records.append(record)
        self.card_info["member_cards"] = records
        return super().save(directory)

    def _get_state(self) -> dict[str, np.ndarray]:
        return {"weights": np.asarray(self.weights, dtype=np.float64)}

    def _set_state(self, tensors: dict[str, np.ndarray]) -> None:
        weights = tensors.get("weights")
        if weights is None or weights.shape != (len(self.members),):
            shape = None if weights is None else weights.shape
            raise CardError(f"ensemble router card needs a 'weights' tensor of shape "
                            f"({len(self.members)},) for its members, got {shape}")
        if not np.isfinite(weights).all():
            raise CardError("ensemble router card has non-finite weights")
        self.weights = np.asarray(weights, dtype=np.float64)


def prompt_folds(n_prompts: int, folds: int, seed: int) -> np.ndarray:
    """A fold number per prompt, folds as equal as can be, in a seeded random order."""
    if n_prompts < folds:
        raise DataError(f"only {n_prompts} prompts: too few for {folds} member folds")
    fold = np.empty(n_prompts, dtype=np.int64)
    fold[np.random.default_rng(seed).permutation(n_prompts)] = np.arange(n_prompts) % folds
    return fold


def member_directory(record: dict[str, Any], ensemble_dir: str | Path | None) -> Path:
    """Where a member card recorded on an ensemble card lives: a path inside the ensemble's card
    (`members/...`), a shipped default's name, or a directory (absolute, or relative to the
    ensemble's card)."""
    from switchllm.routers import DEFAULTS_DIR, ROUTER_KINDS

    card = str(record.get("card") or record.get("name") or "")
    if not card:
        raise CardError("ensemble router card has a member with no card")
    base = Path(ensemble_dir) if ensemble_dir is not None else None
    if card.startswith("default:"):
        name = card.removeprefix("default:")
        if name not in ROUTER_KINDS or not (DEFAULTS_DIR / name / CARD_JSON).is_file():
            raise CardError(f"ensemble member {name!r}: no shipped default {name} card")
        return DEFAULTS_DIR / name
    path = Path(card)
    if not path.is_absolute() and base is not None:
        path = base / path
    if not (path / CARD_JSON).is_file():
        raise CardError(f"ensemble member {record.get('name')!r}: no router card at {path}")
    return path


def _member_reference(spec: str, member_dir: Path) -> str:
    """How the card names a member it did not train: `default:KIND` for a shipped default (so
    the card works wherever the package is installed), else the directory as given."""
    from switchllm.routers import DEFAULTS_DIR

    if member_dir.resolve().parent == DEFAULTS_DIR.resolve():
        return f"default:{member_dir.name}"
    return str(member_dir.resolve())


def load_member(spec: str) -> Router:
    from switchllm.routers import load_router

    router = load_router(spec)
    if router.kind == "ensemble":
        raise SwitchLLMError("an ensemble cannot be a member of an ensemble")
    if router.kind == "random":
        raise SwitchLLMError("the random router adds nothing to an ensemble")
    return router


def train_member(spec: str, battles: Battles, progress: bool = False) -> Router:
    """A fresh router of the member's kind (a kind name, or a card directory: its kind and
    parameters) trained on `battles`."""
    from switchllm.routers import ROUTER_KINDS, router_class
    from switchllm.routers.base import read_card

    if spec in ROUTER_KINDS:
        kind, params = spec, {}
    elif Path(spec).is_dir():
        card, _ = read_card(spec)
        kind, params = card["type"], dict(card.get("params", {}))
    else:
        raise SwitchLLMError(f"ensemble member {spec!r} is neither a router kind nor a card "
                             "directory")
    if kind in ("ensemble", "random"):
        raise SwitchLLMError(f"an ensemble cannot train a {kind} member")
    return router_class(kind)(**params).fit(battles, progress=progress)


def usable_battles(routers: Sequence[Router], battles: Battles) -> Battles:
    """The battles between two different models that every member knows (no member can be
    asked about the others), with only those models in the model list."""
    from switchllm.data.battles import Battles
    from switchllm.training import _select_rows

    known_sets = [set(r.models) for r in routers if r.models]
    usable = np.array([all(m in k for k in known_sets) for m in battles.models], dtype=bool)
    rows = usable[battles.model_a] & usable[battles.model_b] & (battles.model_a
                                                                  != battles.model_b)
    if not rows.any():
        raise DataError("no battle is between models every ensemble member knows")
    sub = _select_rows(battles, rows)
    # only the usable models in the model list: members index every listed model
    kept = np.nonzero(usable)[0]
    remap = np.full(len(battles.models), -1, dtype=np.int64)
    remap[kept] = np.arange(len(kept))
    return Battles(sub.prompts, [battles.models[i] for i in kept], sub.prompt_idx,
                   remap[sub.model_a], remap[sub.model_b], sub.outcome, sub.weight)


def stacking_features(routers: Sequence[Router], battles: Battles
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(member logits per battle, outcome, weight) for `usable_battles`, in their order."""
    from switchllm.training import predict_battles

    sub = usable_battles(routers, battles)
    x = np.stack([logit(predict_battles(r, sub)) for r in routers], axis=1)
    return x, sub.outcome.astype(np.float64), sub.weight.astype(np.float64)
