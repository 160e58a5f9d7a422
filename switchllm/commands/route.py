"""`switchllm route "prompt"`: each router's strong win rate for the prompt and its decision.
Offline: no key and no network with the default local embedding model."""

from __future__ import annotations

import argparse
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompt", help="the prompt to route")
    parser.add_argument("--router", action="append", default=None, metavar="NAME_OR_DIR",
                        help="router name or card directory, repeatable "
                             "(default: every available router)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="strong win rate at or above which the strong model is called "
                             "(default: each router's calibrated threshold for 50%% strong "
                             "calls, or 0.5 without calibration)")
    parser.add_argument("--strong-model", default=None, help="default: the router's pair")
    parser.add_argument("--weak-model", default=None, help="default: the router's pair")


def run(args: argparse.Namespace) -> int:
    from switchllm.errors import SwitchLLMError
    from switchllm.routers import available_routers, load_router

    if args.threshold is not None and not 0.0 <= args.threshold <= 1.0:
        raise SwitchLLMError(f"--threshold must be in [0, 1], got {args.threshold}")
    if not args.prompt.strip():
        raise SwitchLLMError("the prompt is empty")
    explicit = args.router is not None
    specs = args.router if explicit else available_routers()
    rows: list[tuple[str, str, str, str, str]] = []
    failures = 0
    for spec in specs:
        try:
            router = load_router(spec)
            strong, weak = router.resolve_pair(args.strong_model, args.weak_model)
            rate = float(router.win_rate([args.prompt], strong, weak)[0])
            threshold = args.threshold
            if threshold is None:
                try:
                    threshold = router.threshold_for_strong_share(0.5)
                except SwitchLLMError:
                    threshold = 0.5
        except SwitchLLMError as exc:
            if explicit:
                raise
            print(f"{spec}: skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        choice = strong if rate >= threshold else weak
        rows.append((spec, f"{rate:.4f}", f"{threshold:.4f}",
                     "strong" if rate >= threshold else "weak", choice))
    if not rows:
        raise SwitchLLMError("no router could route the prompt")
    header = ("router", "win rate", "threshold", "decision", "model")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 1 if failures and not rows else 0
