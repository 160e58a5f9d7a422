"""RouteLLM's server entry point: `python -m switchllm.openai_server` takes RouteLLM's
command line unchanged (`--routers mf --config config.example.yaml`, `--workers`, `--verbose`,
`--port`, `--base-url`, `--api-key`, `--strong-model`, `--weak-model`) and every flag of
`switchllm serve`, which it runs. As in RouteLLM, the router defaults to `random` and the pair
to gpt-4-1106-preview / anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1. Unlike RouteLLM it
listens on 127.0.0.1 unless given `--host 0.0.0.0`."""

from __future__ import annotations

import argparse
import sys

from switchllm.commands import serve
from switchllm.errors import SwitchLLMError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m switchllm.openai_server",
        description="An OpenAI-compatible API server for LLM routing (RouteLLM's flags).")
    serve.add_arguments(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    from switchllm.serving import load_yaml

    args = build_parser().parse_args(argv)
    try:
        if not args.routers and not (args.config and load_yaml(args.config).get("routers")):
            args.routers = ["random"]  # RouteLLM's default
        return serve.run(args)
    except SwitchLLMError as exc:
        print(f"switchllm openai_server: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
