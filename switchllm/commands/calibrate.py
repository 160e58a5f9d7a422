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
    parser.add_argument("--router", "--routers", dest="routers", nargs="+", required=True,
                        help="router names or card directories")
    parser.add_argument("--strong-pct", "--strong-model-pct", dest="strong_pct", type=float,
                        required=True, help="share of calls to send to the strong model, 0..1")
    routellm = parser.add_argument_group("RouteLLM's flags (its command lines run unchanged)")
    routellm.add_argument("--task", choices=["calibrate", "generate"], default="calibrate",
                          help="calibrate (the default) prints thresholds; RouteLLM's generate "
                          "uploads win rates to a model hub, which switchllm never does")
    routellm.add_argument("--config", default=None, help="RouteLLM router config YAML (a "
                          "section whose checkpoint_path is a local card directory uses it)")
    routellm.add_argument("--battles_dataset", "--battles-dataset", default=None,
                          help="accepted for --task generate only; use --prompts FILE")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--prompts", help="JSONL with a prompt or messages field per line, "
                        "or a plain text file with one prompt per line")
    source.add_argument("--from-log", action="store_true",
                        help="use the prompt texts in the decision log")
    source.add_argument("--calibration-set", default=None, metavar="NAME",
                        help="use the card's quantiles on one prompt set (shipped cards: "
                        "llmrouter, arena-hard, validation) instead of its chat quantiles")
    parser.add_argument("--log", default=DEFAULT_LOG_PATH,
                        help="decision log: SQLite path or postgresql:// URL")
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
                prompts.append(_first_turn(record["prompt"]))
            elif isinstance(record, dict) and isinstance(record.get("turns"), list) and \
                    record["turns"] and isinstance(record["turns"][0], str):
                # MT-Bench's question.jsonl: routers score the first turn (what a user sends
                # before any answer exists)
                prompts.append(record["turns"][0])
            elif isinstance(record, dict) and isinstance(record.get("messages"), list):
                prompts.append(prompt_text(record["messages"]))
            else:
                raise DataError(f"{path}:{number}: needs a 'prompt' string, a 'messages' list "
                                "or a 'turns' list")
    if not prompts:
        raise DataError(f"{path} holds no prompts")
    return prompts


def _first_turn(prompt: str) -> str:
    """Arena exports store `prompt` as a JSON list of turns (`'["Hi", "More"]'`): the first."""
    if prompt.startswith("[") and prompt.endswith("]"):
        try:
            turns = json.loads(prompt)
        except ValueError:
            return prompt
        if isinstance(turns, list) and turns and all(isinstance(t, str) for t in turns):
            return turns[0]
    return prompt


def threshold_for(rates: np.ndarray, strong_pct: float) -> float:
    return float(np.quantile(rates, 1.0 - strong_pct))


def run(args: argparse.Namespace) -> int:
    from switchllm.serving import load_yaml, routers_from

    if args.task == "generate":
        raise SwitchLLMError(
            "--task generate computes win rates over a hub dataset and uploads them; switchllm "
            "calibrates from the router card's quantiles, --prompts FILE or --from-log instead"
        )
    if not 0.0 <= args.strong_pct <= 1.0:
        raise SwitchLLMError(f"--strong-pct must be in [0, 1], got {args.strong_pct}")
    raw = load_yaml(args.config) if args.config else {}
    specs = routers_from(list(args.routers), raw)
    prompts, source = _prompts(args)
    for name, spec in specs.items():
        _calibrate_one(args, name, spec, prompts, source)
    return 0


def _prompts(args: argparse.Namespace) -> tuple[list[str] | None, str]:
    if args.prompts:
        return read_prompts(args.prompts), args.prompts
    if args.from_log:
        from switchllm.serving import logged_prompts
        from switchllm.serving.log_store import shown

        return logged_prompts(args.log), f"the decision log {shown(args.log)}"
    return None, ""


def _calibrate_one(args: argparse.Namespace, name: str, spec: str, prompts: list[str] | None,
                   source: str) -> None:
    from switchllm.routers import load_router
    from switchllm.serving import router_pair

    router = load_router(spec)
    if prompts is not None:
        strong, weak = (None, None)
        if args.strong_model and args.weak_model:
            strong, weak = router_pair(router, args.strong_model, args.weak_model)
        from tqdm import tqdm

        rates = []
        for start in tqdm(range(0, len(prompts), BATCH), desc=f"win rates ({name})",
                          unit="batch", disable=True if len(prompts) <= BATCH else None):
            rates.append(np.asarray(router.win_rate(prompts[start:start + BATCH], strong, weak)))
        threshold = threshold_for(np.concatenate(rates), args.strong_pct)
        basis = f"{len(prompts)} prompts from {source}"
    else:
        threshold = router.threshold_for_strong_share(args.strong_pct, args.calibration_set)
        basis = ("the router card's calibration quantiles" if args.calibration_set is None
                 else f"the router card's {args.calibration_set} calibration quantiles")
    label = Path(name).name
    print(f"For {args.strong_pct * 100:.1f}% strong model calls for {label}, "
          f"threshold = {threshold:.5f}  (from {basis})")
    print(f"Use model name router-{label}-{threshold:.5f}")
