"""The shipped benchmarks: prompts, per-model quality, per-query cost, and training battles.

Every benchmark becomes one `Benchmark`: `quality[i, j]` is how well `models[j]` answered
`prompts[i]` (accuracy 0/1, a GPT-4 grade 1-10, or a vote share; NaN = not measured) and
`cost[i, j]` its dollar cost where known. Model names are canonicalised across sets with
`MODEL_ALIASES` so that the same model has one name everywhere. Data lives gzip-compressed in
`switchllm/data/sets/` (see docs/DATA_CARD.md; written by scripts/import_data.py).
"""

from __future__ import annotations

import ast
import csv
import gzip
import io
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from switchllm.data.battles import A_WINS, B_WINS, TIE, Battles
from switchllm.errors import DataError, SwitchLLMError, UnknownModelError

SETS_DIR = Path(__file__).parent / "sets"
STRONG, WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"

# Names that certainly denote the same model in different sets -> one canonical name.
MODEL_ALIASES: dict[str, str] = {
    "mistralai/mixtral-8x7b-chat": WEAK,  # RouterBench
    "mixtral-8x7b-instruct-v0.1": WEAK,  # LLMRouter price list
    "meta/llama-2-70b-chat": "meta-llama/Llama-2-70b-chat-hf",  # RouterBench
    "Llama-2-70b-chat": "meta-llama/Llama-2-70b-chat-hf",  # Arena-Hard
    "claude-1": "claude-v1",  # Arena-Hard; RouterBench and MT-Bench human say claude-v1
    "claude-instant-1": "claude-instant-v1",  # Arena-Hard; RouterBench says claude-instant-v1
}

BENCHMARKS: list[str] = [
    "mmlu", "gsm8k", "mt-bench", "routerbench", "llmrouter", "arena-hard", "mt-bench-human",
]
# Sets whose prompts are the same questions: evaluating on one means never training on the other.
SHARED_PROMPTS: dict[str, set[str]] = {"mt-bench": {"mt-bench-human"},
                                       "mt-bench-human": {"mt-bench"}}
TRAINING_SOURCES: list[str] = [
    "routerbench", "llmrouter", "arena-hard", "mmlu", "gsm8k", "mt-bench", "mt-bench-human",
]
# MT-Bench is the headline evaluation: default routers never train on its prompts.
DEFAULT_TRAINING_EXCLUDE = frozenset({"mt-bench", "mt-bench-human"})
# Benchmarks that are the test split of a set whose train split is a training source.
TEST_SPLITS = frozenset({"routerbench", "llmrouter"})

ROUTERBENCH_TASKS = ("arc_challenge", "mbpp", "winograde")
# LLMRouter gives prices per 1M tokens but no token counts: per-query cost is estimated from the
# prompt length (about 4 characters per token) plus a fixed answer length.
CHARS_PER_TOKEN = 4
ASSUMED_OUTPUT_TOKENS = 256


def canonical_model(name: str) -> str:
    return MODEL_ALIASES.get(name, name)


@dataclass(frozen=True, eq=False)
class Benchmark:
    """One evaluation set. `quality` and `cost` are (len(prompts), len(models)) float arrays."""

    name: str
    prompts: list[str]
    models: list[str]
    quality: np.ndarray
    cost: np.ndarray | None = None
    #: model -> {"input": $/1M tokens, "output": $/1M tokens}, where the source gives prices
    prices: dict[str, dict[str, float]] | None = None
    #: how quality is shown: label, and the factor to display it with (100: accuracy in %)
    quality_label: str = "accuracy (%)"
    quality_scale: float = 100.0
    #: (strong, weak) used when the caller's pair is not in this benchmark
    default_pair: tuple[str, str] = (STRONG, WEAK)
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = (len(self.prompts), len(self.models))
        if self.quality.shape != shape:
            raise DataError(f"{self.name}: quality has shape {self.quality.shape}, not {shape}")
        if self.cost is not None and self.cost.shape != shape:
            raise DataError(f"{self.name}: cost has shape {self.cost.shape}, not {shape}")

    def __len__(self) -> int:
        return len(self.prompts)

    def model_index(self, model: str) -> int:
        try:
            return self.models.index(model)
        except ValueError:
            raise UnknownModelError(
                f"model {model!r} is not in benchmark {self.name}; its models: "
                f"{', '.join(self.models)}"
            ) from None

    def column(self, model: str) -> np.ndarray:
        return self.quality[:, self.model_index(model)]

    def model_quality(self, model: str) -> float:
        """Mean quality of one model over the prompts it was measured on, in display units."""
        return float(np.nanmean(self.column(model)) * self.quality_scale)

    def to_battles(self, tie_margin: float = 0.0) -> Battles:
        """Every pair of models measured on the same prompt, as battles (higher quality wins)."""
        return Battles.from_scores(self.prompts, self.models, self.quality, tie_margin)


# ---- reading the shipped files --------------------------------------------------------------

def _open_text(path: Path) -> io.TextIOBase:
    if not path.is_file():
        raise DataError(f"shipped data file {path} is missing (run scripts/import_data.py)")
    return io.TextIOWrapper(gzip.open(path), encoding="utf-8", newline="")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with _open_text(path) as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    csv.field_size_limit(sys.maxsize)
    with _open_text(path) as handle:
        reader = csv.reader(handle)
        header = next(reader)
        return header, list(reader)


def _cell(value: str) -> float:
    """A score cell: True/False, a number, or empty (not measured)."""
    if value in ("True", "true"):
        return 1.0
    if value in ("False", "false"):
        return 0.0
    return float(value) if value.strip() else math.nan


def _contaminated(folder: str) -> set[str]:
    return {row["eval_prompt"] for row in
            _read_jsonl(SETS_DIR / "routellm" / folder / "contaminated_prompts.jsonl.gz")}


def _routellm_accuracy(name: str, folder: str, description: str) -> Benchmark:
    header, rows = _read_csv(SETS_DIR / "routellm" / folder / "responses.csv.gz")
    models = [STRONG, WEAK]
    columns = [header.index(m) for m in models]
    drop = _contaminated(folder)
    kept = [row for row in rows if row[0] not in drop]
    quality = np.array([[_cell(row[c]) for c in columns] for row in kept], dtype=np.float64)
    return Benchmark(name, [row[0] for row in kept], models, quality, description=description,
                     extra={"n_before_decontamination": len(rows)})


def _mt_bench_questions() -> list[dict[str, Any]]:
    drop = _contaminated("mt_bench")
    questions = _read_jsonl(SETS_DIR / "routellm" / "mt_bench" / "question.jsonl.gz")
    return [q for q in questions if q["turns"][0] not in drop and q["turns"][1] not in drop]


def _load_mt_bench() -> Benchmark:
    questions = _mt_bench_questions()
    models = [STRONG, WEAK]
    grades: dict[tuple[int, str], list[float]] = {}
    for row in _read_jsonl(SETS_DIR / "routellm" / "mt_bench" / "judgements.jsonl.gz"):
        if row["score"] != -1:  # -1: the judge's grade could not be parsed
            grades.setdefault((row["question_id"], row["model"]), []).append(row["score"])
    # Routed on the first turn; the chosen model answers both turns, scored by their mean grade.
    quality = np.array([[np.mean(grades[(q["question_id"], m)]) if (q["question_id"], m) in grades
                         else math.nan for m in models] for q in questions])
    return Benchmark(
        "mt-bench", [q["turns"][0] for q in questions], models, quality,
        quality_label="GPT-4 grade (1-10)", quality_scale=1.0,
        description="MT-Bench (RouteLLM judgements), routed on turn 1, mean grade of both turns",
        extra={"question_ids": [q["question_id"] for q in questions],
               "categories": [q["category"] for q in questions]},
    )


def _routerbench_rows(split: str) -> tuple[list[str], list[str], np.ndarray, np.ndarray,
                                           list[str]]:
    prompts: list[str] = []
    tasks: list[str] = []
    quality_rows: list[list[float]] = []
    cost_rows: list[list[float]] = []
    models: list[str] | None = None
    for task in ROUTERBENCH_TASKS:
        header, rows = _read_csv(SETS_DIR / "routerbench" / f"{task}_{split}.csv.gz")
        raw_models = [h[: -len("|total_cost")] for h in header if h.endswith("|total_cost")]
        if models is None:
            models = raw_models
        score_cols = [header.index(m) for m in models]
        cost_cols = [header.index(f"{m}|total_cost") for m in models]
        prompt_col, task_col = header.index("prompt"), header.index("eval_name")
        for line, row in enumerate(rows, start=2):
            try:  # the prompt column is a Python list literal of conversation turns
                turns = ast.literal_eval(row[prompt_col])
            except (ValueError, SyntaxError) as exc:
                raise DataError(f"routerbench {task}_{split}.csv line {line}: bad prompt: {exc}"
                                ) from exc
            prompts.append("\n\n".join(turns) if isinstance(turns, list) else str(turns))
            tasks.append(row[task_col])
            quality_rows.append([_cell(row[c]) for c in score_cols])
            cost_rows.append([_cell(row[c]) for c in cost_cols])
    assert models is not None
    return (prompts, [canonical_model(m) for m in models], np.array(quality_rows),
            np.array(cost_rows), tasks)


def _load_routerbench() -> Benchmark:
    prompts, models, quality, cost, tasks = _routerbench_rows("test")
    return Benchmark("routerbench", prompts, models, quality, cost,
                     description="RouterBench test split: ARC-Challenge, MBPP, Winogrande",
                     extra={"tasks": tasks})


def _llmrouter_prices() -> dict[str, dict[str, float]]:
    candidates = json.loads((SETS_DIR / "llmrouter" / "llm_candidates.json").read_text())
    return {name: {"input": float(c["input_price"]), "output": float(c["output_price"])}
            for name, c in candidates.items()}


def _llmrouter_split(split: str) -> tuple[list[str], list[str], np.ndarray]:
    with _open_text(SETS_DIR / "llmrouter" / f"{split}.json.gz") as handle:
        rows = json.load(handle)
    models = list(dict.fromkeys(m for row in rows for m in row["scores"]))
    quality = np.array([[float(row["scores"].get(m, math.nan)) for m in models] for row in rows])
    return [row["question"] for row in rows], models, quality


def _load_llmrouter() -> Benchmark:
    prompts, models, quality = _llmrouter_split("test")
    prices = _llmrouter_prices()
    missing = [m for m in models if m not in prices]
    if missing:
        raise DataError(f"llmrouter: no price for {missing}")
    tokens_in = np.array([math.ceil(len(p) / CHARS_PER_TOKEN) for p in prompts], dtype=float)
    cost = (tokens_in[:, None] * np.array([prices[m]["input"] for m in models])
            + ASSUMED_OUTPUT_TOKENS * np.array([prices[m]["output"] for m in models])) / 1e6
    mean_quality = np.nanmean(quality, axis=0)
    strong = models[int(np.argmax(mean_quality))]
    # The weak model: the cheapest; among equally cheap ones, the best.
    weak = min(models, key=lambda m: (prices[m]["input"] + prices[m]["output"],
                                      -mean_quality[models.index(m)]))
    return Benchmark(
        "llmrouter", prompts, [canonical_model(m) for m in models], quality, cost,
        prices={canonical_model(m): prices[m] for m in models},
        quality_label="score (%)", default_pair=(canonical_model(strong), canonical_model(weak)),
        description="LLMRouter test split; cost estimated from prompt length and prices",
    )


def _load_arena_hard() -> Benchmark:
    rows = _read_jsonl(SETS_DIR / "arena-hard-v1" / "scores.jsonl.gz")
    raw_models = list(dict.fromkeys(m for row in rows for m in row["scores"]))
    quality = np.array([[float(row["scores"].get(m, math.nan)) for m in raw_models]
                        for row in rows])
    return Benchmark(
        "arena-hard", [row["prompt"] for row in rows], [canonical_model(m) for m in raw_models],
        quality, quality_label="GPT-4 grade (1-10)", quality_scale=1.0,
        description="Arena-Hard v1: 300 hard Chatbot Arena prompts, GPT-4 grades",
    )


_VOTE_OUTCOME = {"model_a": A_WINS, "model_b": B_WINS, "tie": TIE}


def _human_votes() -> list[tuple[int, str, str, float]]:
    rows = _read_jsonl(SETS_DIR / "mt-bench-human" / "human_judgments.jsonl.gz")
    votes = []
    for line, row in enumerate(rows, start=1):
        if row["winner"] not in _VOTE_OUTCOME:
            raise DataError(f"mt-bench-human line {line}: unknown winner {row['winner']!r}")
        votes.append((row["question_id"], canonical_model(row["model_a"]),
                      canonical_model(row["model_b"]), _VOTE_OUTCOME[row["winner"]]))
    return votes


def _load_mt_bench_human() -> Benchmark:
    questions = _mt_bench_questions()
    row_of = {q["question_id"]: i for i, q in enumerate(questions)}
    votes = [v for v in _human_votes() if v[0] in row_of]
    models = list(dict.fromkeys(m for v in votes for m in v[1:3]))
    col = {m: j for j, m in enumerate(models)}
    won = np.zeros((len(questions), len(models)))
    count = np.zeros_like(won)
    for qid, a, b, outcome in votes:  # a model's quality: its share of the votes it was in
        i = row_of[qid]
        won[i, col[a]] += outcome
        won[i, col[b]] += 1.0 - outcome
        count[i, col[a]] += 1
        count[i, col[b]] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        quality = np.where(count > 0, won / count, np.nan)
    return Benchmark(
        "mt-bench-human", [q["turns"][0] for q in questions], models, quality,
        quality_label="human vote share (%)", default_pair=("gpt-4", "gpt-3.5-turbo"),
        description="MT-Bench turn 1, human pairwise votes; quality = share of votes won",
        extra={"n_votes": len(votes)},
    )


_LOADERS = {
    "mmlu": lambda: _routellm_accuracy("mmlu", "mmlu", "MMLU (RouteLLM results), 57 subjects"),
    "gsm8k": lambda: _routellm_accuracy("gsm8k", "gsm8k", "GSM8K test (RouteLLM results)"),
    "mt-bench": _load_mt_bench,
    "routerbench": _load_routerbench,
    "llmrouter": _load_llmrouter,
    "arena-hard": _load_arena_hard,
    "mt-bench-human": _load_mt_bench_human,
}


@lru_cache(maxsize=16)
def load_benchmark(name: str) -> Benchmark:
    """A shipped benchmark by name (see `BENCHMARKS`). Parsed once per process."""
    if name not in _LOADERS:
        raise SwitchLLMError(f"unknown benchmark {name!r}; known benchmarks: "
                             f"{', '.join(BENCHMARKS)}")
    return _LOADERS[name]()


# ---- training battles ------------------------------------------------------------------------

def _training_battles(source: str) -> Battles:
    if source == "routerbench":
        prompts, models, quality, _, _ = _routerbench_rows("train")
        return Battles.from_scores(prompts, models, quality)
    if source == "llmrouter":
        prompts, models, quality = _llmrouter_split("train")
        # (119 training questions reappear in the test split: the caller drops them.)
        return Battles.from_scores(prompts, [canonical_model(m) for m in models], quality)
    if source == "mt-bench-human":
        turn1 = {q["question_id"]: q["turns"][0] for q in
                 _read_jsonl(SETS_DIR / "routellm" / "mt_bench" / "question.jsonl.gz")}
        return Battles.from_records([(turn1[qid], a, b, outcome)
                                     for qid, a, b, outcome in _human_votes()])
    return load_benchmark(source).to_battles()


@lru_cache(maxsize=16)
def _cached_training_battles(exclude: frozenset[str]) -> Battles:
    parts = [_training_battles(s) for s in TRAINING_SOURCES if s not in exclude]
    if not parts:
        raise SwitchLLMError("every training source is excluded: no training battles left")
    battles = parts[0]
    for part in parts[1:]:
        battles = battles.concat(part)
    # Sets overlap (LLMRouter's training questions include MBPP and GSM8K ones): a prompt of an
    # excluded set or of a test split never reaches training, whichever set brought it.
    held_out = {p for name in (exclude | TEST_SPLITS) & set(BENCHMARKS)
                for p in load_benchmark(name).prompts}
    return battles.select_prompts(np.array([p not in held_out for p in battles.prompts]))


def shipped_training_battles(exclude: Iterable[str] = DEFAULT_TRAINING_EXCLUDE) -> Battles:
    """Battles from the training portions of the shipped sets (`TRAINING_SOURCES`) minus the
    named sets: RouterBench and LLMRouter train splits, Arena-Hard, RouteLLM's MMLU, GSM8K and
    MT-Bench results, and the MT-Bench human votes. Prompts of the excluded sets and of the
    test splits (`TEST_SPLITS`) are dropped whichever set they come from."""
    exclude = frozenset(exclude)
    unknown = exclude - set(TRAINING_SOURCES)
    if unknown:
        raise SwitchLLMError(f"unknown training sets {sorted(unknown)}; known: "
                             f"{', '.join(TRAINING_SOURCES)}")
    return _cached_training_battles(exclude)


# Share of the training weight given to the served pair's battles (see `router_training_battles`).
PAIR_SHARE = 0.5


def router_training_battles(exclude: Iterable[str] = DEFAULT_TRAINING_EXCLUDE,
                            strong: str | None = None, weak: str | None = None) -> Battles:
    """The recipe of the shipped default routers (and of `switchllm eval --leave-out`): the
    shipped training battles minus `exclude`, with the battles between `strong` and `weak`
    (default RouteLLM's pair) holding `PAIR_SHARE` of the weight, so the many-model sets do
    not drown the pair the router mostly serves. Measured on MT-Bench, never trained on: mf
    APGR 0.43 without the emphasis, 0.60 with it."""
    from switchllm.routers.base import DEFAULT_STRONG_MODEL, DEFAULT_WEAK_MODEL

    battles = shipped_training_battles(exclude)
    strong, weak = strong or DEFAULT_STRONG_MODEL, weak or DEFAULT_WEAK_MODEL
    if strong in battles.models and weak in battles.models:
        try:
            battles = battles.emphasize_pair(strong, weak, PAIR_SHARE)
        except DataError:
            pass  # the two models never met: nothing to emphasise
    return battles


def leave_out_exclusions(benchmark: str) -> set[str]:
    """What to leave out of training to evaluate honestly on `benchmark`: the benchmark, sets
    sharing its prompts, and MT-Bench (never trained on, as in RouteLLM)."""
    return ({benchmark} | SHARED_PROMPTS.get(benchmark, set()) | DEFAULT_TRAINING_EXCLUDE) & set(
        TRAINING_SOURCES)
