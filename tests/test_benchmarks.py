"""The shipped benchmarks load with the published endpoints, fast, with canonical model names."""

import time

import numpy as np
import pytest

from switchllm.data import benchmarks as bm
from switchllm.errors import SwitchLLMError


@pytest.mark.parametrize(
    ("name", "n", "strong", "weak"),
    [("mmlu", 14037, 80.59, 68.09), ("gsm8k", 1307, 85.77, 63.73), ("mt-bench", 72, 9.21, 8.28)],
)
def test_routellm_endpoints_after_decontamination(name: str, n: int, strong: float,
                                                  weak: float) -> None:
    bench = bm.load_benchmark(name)
    assert len(bench) == n
    assert round(bench.model_quality(bm.STRONG), 2) == strong
    assert round(bench.model_quality(bm.WEAK), 2) == weak


def test_mt_bench_quality_is_mean_of_both_turn_grades() -> None:
    bench = bm.load_benchmark("mt-bench")
    assert np.all((bench.quality >= 1) & (bench.quality <= 10))  # failed grades (-1) excluded
    # recompute one question's quality from the shipped judgements
    qid = bench.extra["question_ids"][0]
    rows = [r for r in bm._read_jsonl(bm.SETS_DIR / "routellm/mt_bench/judgements.jsonl.gz")
            if r["question_id"] == qid and r["model"] == bm.WEAK]
    assert sorted(r["turn"] for r in rows) == [1, 2]
    assert bench.quality[0, 1] == pytest.approx((rows[0]["score"] + rows[1]["score"]) / 2)
    assert bench.prompts[0].startswith("Draft a professional email")  # turn 1 of question 82


def test_every_benchmark_loads_fast_and_consistently() -> None:
    bm.load_benchmark.cache_clear()
    for name in bm.BENCHMARKS:
        started = time.perf_counter()
        bench = bm.load_benchmark(name)
        assert time.perf_counter() - started < 2.0, name
        assert bench.quality.shape == (len(bench.prompts), len(bench.models))
        assert len(bench) > 0 and all(isinstance(p, str) and p for p in bench.prompts)
        assert set(bench.default_pair) <= set(bench.models), name
    assert bm.load_benchmark("mmlu") is bm.load_benchmark("mmlu")  # parsed once


def test_routerbench_prompts_parsed_names_canonical_costs_present() -> None:
    bench = bm.load_benchmark("routerbench")
    assert len(bench) == 445 + 128 + 380  # test rows of ARC-Challenge, MBPP, Winogrande
    assert not any(p.startswith("['") for p in bench.prompts)  # list literals were parsed
    assert bm.WEAK in bench.models and "mistralai/mixtral-8x7b-chat" not in bench.models
    assert bench.cost is not None and np.all(bench.cost > 0)
    assert bench.model_quality("gpt-4-1106-preview") > bench.model_quality(bm.WEAK)


def test_arena_hard_and_llmrouter_and_human_votes() -> None:
    arena = bm.load_benchmark("arena-hard")
    assert len(arena) == 300 and "claude-v1" in arena.models  # claude-1 canonicalised
    assert np.isnan(arena.quality).any()  # missing grades stay missing
    llm = bm.load_benchmark("llmrouter")
    assert len(llm) == 500 and llm.prices and llm.cost is not None
    strong, weak = llm.default_pair
    assert llm.model_quality(strong) == max(llm.model_quality(m) for m in llm.models)
    human = bm.load_benchmark("mt-bench-human")
    assert set(human.models) == {"gpt-4", "gpt-3.5-turbo", "claude-v1", "vicuna-13b-v1.2",
                                 "alpaca-13b", "llama-13b"}
    assert np.nanmin(human.quality) >= 0 and np.nanmax(human.quality) <= 1


def test_to_battles_compares_models_per_prompt() -> None:
    bench = bm.load_benchmark("gsm8k")
    battles = bench.to_battles()
    both = ~np.isnan(bench.quality).any(axis=1)
    assert len(battles) == both.sum()  # two models: one battle per prompt
    strong_right_only = (bench.quality[:, 0] == 1) & (bench.quality[:, 1] == 0)
    assert (battles.outcome == 1.0).sum() == strong_right_only.sum()


def test_unknown_benchmark_lists_known_ones() -> None:
    with pytest.raises(SwitchLLMError, match="known benchmarks: mmlu, gsm8k, mt-bench"):
        bm.load_benchmark("mmlu-pro")


def test_shipped_training_battles_leave_out_the_evaluation_prompts() -> None:
    battles = bm.shipped_training_battles()  # default: no MT-Bench, no MT-Bench human votes
    prompts = set(battles.prompts)
    assert not prompts & set(bm.load_benchmark("mt-bench").prompts)
    assert not prompts & set(bm.load_benchmark("routerbench").prompts)  # train split only
    assert not prompts & set(bm.load_benchmark("llmrouter").prompts)
    # GSM8K trains, except the questions LLMRouter's test split holds too
    gsm8k = set(bm.load_benchmark("gsm8k").prompts) - set(bm.load_benchmark("llmrouter").prompts)
    assert gsm8k <= prompts
    assert bm.WEAK in battles.models and "gpt-3.5-turbo-1106" in battles.models
    without_gsm8k = bm.shipped_training_battles(bm.leave_out_exclusions("gsm8k"))
    assert not set(without_gsm8k.prompts) & set(bm.load_benchmark("gsm8k").prompts)
    assert bm.leave_out_exclusions("mt-bench-human") == {"mt-bench", "mt-bench-human"}
    with pytest.raises(SwitchLLMError, match="unknown training sets"):
        bm.shipped_training_battles({"nope"})
