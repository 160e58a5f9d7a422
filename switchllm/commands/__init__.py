"""Sub-commands of the `switchllm` CLI, one module each."""
