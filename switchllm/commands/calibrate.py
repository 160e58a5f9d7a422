"""`switchllm calibrate`: the threshold that sends a given share of calls to the strong model.

RouteLLM's rule: the (1 - pct) quantile of the router's win rates over the prompts your users
actually send (a prompts file, or the prompt texts in the decision log). Without prompts, the
router card's stored calibration quantiles are used."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from switchllm.errors import DataError, SwitchLLMError
from switchllm.serving import DEFAULT_LOG_PATH, prompt_text

BATCH = 256


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--router", required=True, help="router name or card directory")
    parser.add_argument("--strong-pct", "--strong-model-pct", dest="strong_pct", type=float,
                        required=True, help="share of calls to send to the strong model, 0..1")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts", help="JSONL with a prompt or messages field per line, "
                        "or a plain text file with one prompt per line")
    source.add_argument("--from-log", action="store_true",
                        help="use the prompt texts in the decision log")
    parser.add_argument("--log", default=DEFAULT_LOG_PATH, help="decision log path")
    parser.add_argument("--strong-model", default=None, help="served strong model (only for "
                        "routers that score specific models)")
    parser.add_argument("--weak-model", default=None, help="served weak model")


def read_prompts(path: str | Path) -> list[str]:
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read prompts file {path}: {exc}") from exc
    first = next((line for line in lines if line.strip()), "")
    prompts: list[str] = []
    if not first.lstrip().startswith("{"):
        prompts = [line for line in lines if line.strip()]
    else:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not valid JSON: {exc.msg}") from None
            if isinstance(record, dict) and isinstance(record.get("prompt"), str):
                prompts.append(record["prompt"])
            elif isinstance(record, dict) and isinstance(record.get("messages"), list):
                prompts.append(prompt_text(record["messages"]))
            else:
                raise DataError(f"{path}:{number}: needs a 'prompt' string or a 'messages' list")
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def threshold_for(rates: np.ndarray, strong_pct: float) -> float:
    return float(np.quantile(rates, 1.0 - strong_pct))


def run(args: argparse.Namespace) -> int:
    from switchllm.routers import load_router
    from switchllm.serving import router_pair

    if not 0.0 <= args.strong_pct <= 1.0:
        raise SwitchLLMError(f"--strong-pct must be in [0, 1], got {args.strong_pct}")
    router = load_router(args.router)
    if args.prompts or args.from_log:
        if args.prompts:
            prompts = read_prompts(args.prompts)
            source = args.prompts
        else:
            from switchllm.serving import logged_prompts

            prompts = logged_prompts(args.log)
            source = f"the decision log {args.log}"
        strong, weak = (None, None)
        if args.strong_model and args.weak_model:
            strong, weak = router_pair(router, args.strong_model, args.weak_model)
        from tqdm import tqdm

        rates = []
        for start in tqdm(range(0, len(prompts), BATCH), desc="win rates", unit="batch",
                          disable=True if len(prompts) <= BATCH else None):
            rates.append(np.asarray(router.win_rate(prompts[start:start + BATCH], strong, weak)))
        threshold = threshold_for(np.concatenate(rates), args.strong_pct)
        basis = f"{len(prompts)} prompts from {source}"
    else:
        threshold = router.threshold_for_strong_share(args.strong_pct)
        basis = "the router card's calibration quantiles"
    print(f"For {args.strong_pct * 100:.1f}% strong model calls for {args.router}, "
          f"threshold = {threshold:.5f}  (from {basis})")
    print(f"Use model name router-{Path(args.router).name}-{threshold:.5f}")
    return 0
