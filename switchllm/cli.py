"""The `switchllm` command. Each sub-command lives in `switchllm.commands.<name>`, imported only
when used so that `switchllm --help` stays instant (torch and friends load lazily)."""

from __future__ import annotations

import argparse
import importlib
import sys

from switchllm import __version__
from switchllm.errors import SwitchLLMError

# name -> one-line help. Each module has `add_arguments(parser)` and `run(args) -> int`.
COMMANDS: dict[str, str] = {
    "eval": "evaluate routers on benchmarks (APGR, CPT, AUC, plots)",
    "train": "train a router on your own data and write a router card",
    "route": "print each router's strong win rate and decision for a prompt",
    "serve": "run the OpenAI-compatible routing server",
    "calibrate": "find the threshold that sends a given share of calls to the strong model",
    "stats": "summarise the decision log: strong share, cost against always-strong",
    "label": "label prompts with an LLM judge or reference answers, as training data",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="switchllm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"switchllm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"switchllm.commands.{name}")
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args._run(args) or 0)
    except SwitchLLMError as exc:
        print(f"switchllm {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
