"""`switchllm stats` (being built)."""

import argparse

from switchllm.errors import SwitchLLMError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    raise SwitchLLMError("`switchllm stats` is not available yet")
