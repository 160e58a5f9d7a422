"""`switchllm train ROUTER --data FILE [FILE ...] --output DIR`: fit a router on your own data
(pairwise battles, per-model scores or golden labels; see docs/TRAINING.md) and write a router
card (router.json + weights.safetensors)."""

from __future__ import annotations

import argparse

TRAINABLE = ("sw_ranking", "mf", "knn", "bert", "causal_llm")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("router", choices=TRAINABLE, help="router kind to train")
    parser.add_argument("--data", nargs="+", required=True, metavar="FILE",
                        help="training files (.jsonl, .json or .csv); several are merged")
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
                        help="embedding model: all-MiniLM-L6-v2 (default) or openai:<model>")
    parser.add_argument("--strong-model", default=None,
                        help="default strong model of the card (default: gpt-4-1106-preview "
                             "if in the data, else the model with the best mean result)")
    parser.add_argument("--weak-model", default=None,
                        help="default weak model (default: Mixtral-8x7B if in the data, else "
                             "the model with the worst mean result)")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE",
                        help="router hyper-parameter, repeatable (see docs/ROUTERS.md)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def run(args: argparse.Namespace) -> int:
    from switchllm.data.formats import load_training_data
    from switchllm.training import parse_params, train_router

    params = parse_params(args.router, args.param)
    loaded = load_training_data(args.data, args.format, args.on_bad_row)
    battles = loaded.battles
    for info in loaded.files:
        print(f"read {info['path']}: {info['format']}, {info['rows']} rows -> "
              f"{info['battles']} battles")
    if loaded.bad_rows:
        print(f"skipped {len(loaded.bad_rows)} bad rows")
    print(f"training {args.router} on {len(battles.prompts)} prompts, {len(battles)} battles, "
          f"{len(battles.models)} models")
    result = train_router(
        args.router, battles, args.output, val_fraction=args.val_fraction, seed=args.seed,
        params=params, embedding_model=args.embedding_model, strong_model=args.strong_model,
        weak_model=args.weak_model, data_files=loaded.files, progress=not args.quiet,
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
