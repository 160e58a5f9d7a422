# The README's two commands: `make run` (set up, then the main job) and `make test`.
.PHONY: setup run test test-all lint

export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

setup:
	bash scripts/setup.sh

# Main job on the embedded defaults: evaluate every available router on every shipped benchmark.
run: setup
	.venv/bin/switchllm eval --benchmark all --routers all --output out/

test: setup
	.venv/bin/python -m pytest -q

test-all: setup
	.venv/bin/python -m pytest -q -m ""

lint: setup
	.venv/bin/ruff check switchllm tests bench scripts
