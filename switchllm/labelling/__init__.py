"""Labelling: turn prompts into training data (`switchllm label`).

- `prompts`: read prompts from JSONL/JSON/CSV/TXT files or the decision log, detect the prompt
  field, de-duplicate and sample;
- `judge`: the LLM-judge prompts (MT-Bench style) and robust verdict parsing;
- `golden`: checks of an answer against a reference (exact, number, choice, regex);
- `runner`: the async orchestration: bounded concurrency, the on-disk cache, cost control and
  incremental output.
"""
