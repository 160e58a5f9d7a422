#!/usr/bin/env bash
# Reproduce the numbers in docs/RESULTS.md (about 20 minutes on 2 CPU cores).
#   bash scripts/reproduce_results.sh [OUTPUT_DIR]      (default docs/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-docs/results}
run=.venv/bin/switchllm
export HF_HUB_OFFLINE=1
# In-domain: 5-fold cross-validation by prompt on each benchmark's own data.
$run eval --benchmark mmlu,gsm8k --routers knn,sw_ranking,mf --cv 5 --output "$out/cv"
# Out-of-domain: trained on every shipped set except the benchmark (and MT-Bench).
$run eval --benchmark mmlu,gsm8k,mt-bench --routers knn,sw_ranking,mf --leave-out \
    --output "$out/leave-out"
# The shipped default routers (never trained on MT-Bench) on every benchmark: `make run`.
$run eval --benchmark all --routers all --output "$out/defaults"
# Choosing among every model (RouterBench, LLMRouter): held out (train split -> test split)
# and in-domain 5-fold CV; settings chosen on validation by scripts/n_model_eval.py.
$run eval --n-models --benchmark routerbench,llmrouter --routers random,knn,mf \
    --output "$out/n_models"
$run eval --n-models --benchmark routerbench,llmrouter --routers random,knn,mf --cv 5 \
    --output "$out/n_models/cv"
.venv/bin/python scripts/results_tables.py "$out"
