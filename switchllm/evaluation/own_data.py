"""Evaluation on your own data: a `Benchmark` from any training file, and learning curves.

Per-prompt quality of a pairwise file: a model's share of the battles it won against the
other model of the evaluated pair on that prompt (a tie counts half), so quality(strong) +
quality(weak) = 1 on every prompt. APGR, CPT and AUC depend only on the per-prompt difference
quality(strong) - quality(weak), and for golden labels that difference is exactly
correct(strong) - correct(weak): a labels file scores the same as its accuracy table would.
Prompts where the pair never met are left out.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from switchllm.data.battles import Battles
from switchllm.data.benchmarks import DEFAULT_TRAINING_EXCLUDE, Benchmark
from switchllm.data.own_data import DEFAULT_USER_WEIGHT, with_shipped
from switchllm.errors import DataError, SwitchLLMError
from switchllm.routers import router_class
from switchllm.training import apgr, pair_gains, split_by_prompt

DEFAULT_TEST_FRACTION = 0.3
MODES = ("own", "with_shipped", "shipped_only")


def benchmark_from_battles(name: str, battles: Battles, strong: str, weak: str,
                           description: str = "") -> Benchmark:
    """A two-model `Benchmark` of the prompts where `strong` and `weak` met (see the module
    docstring for the quality). `extra["battles"]` keeps every battle, for `--cv` training."""
    for model in (strong, weak):
        if model not in battles.models:
            raise DataError(f"model {model!r} is not in {name}; its models: "
                            f"{', '.join(battles.models)}")
    prompts, gains = pair_gains(battles, strong, weak)
    if len(prompts) < 2:
        raise DataError(f"{name}: fewer than 2 prompts where {strong} and {weak} met")
    share = (gains + 1.0) / 2.0  # strong's share of the wins
    quality = np.stack([share, 1.0 - share], axis=1)
    return Benchmark(name, [battles.prompts[i] for i in prompts], [strong, weak], quality,
                     quality_label="share of wins against the other model (%)",
                     default_pair=(strong, weak), description=description,
                     extra={"battles": battles})


def _fit(kind: str, params: dict[str, Any], battles: Battles):
    return router_class(kind)(**params).fit(battles, progress=False)


def learning_curve(
    battles: Battles, kinds: Sequence[str], sizes: Sequence[int], strong: str, weak: str, *,
    test_fraction: float = DEFAULT_TEST_FRACTION, split_seed: int = 0,
    seeds: Iterable[int] = (0,), modes: Sequence[str] = MODES,
    weight: float = DEFAULT_USER_WEIGHT,
    exclude: Iterable[str] = DEFAULT_TRAINING_EXCLUDE, params: dict[str, dict] | None = None,
    shipped_params: dict[str, dict] | None = None, progress: bool = True,
) -> dict[str, Any]:
    """Held-out APGR of each router kind against the number of labelled prompts it was
    trained on. The test split (`test_fraction` of the prompts, by `split_seed`) is fixed;
    each seed draws nested training samples of every size from the rest. `modes`: "own" (the
    sample alone), "with_shipped" (the sample plus the shipped sets minus `exclude`, the
    sample at `weight` of the training weight), "shipped_only" (the shipped sets alone).
    `params` / `shipped_params`: hyper-parameters per kind without / with the shipped sets."""
    from tqdm import tqdm

    exclude = frozenset(exclude)
    pool, test = split_by_prompt(battles, test_fraction, split_seed)
    if test is None:
        raise SwitchLLMError("the learning curve needs a test split (test fraction > 0)")
    test_rows, gains = pair_gains(test, strong, weak)
    if len(test_rows) < 2 or gains.mean() <= 0:
        raise DataError(f"the test split has {len(test_rows)} prompts where {strong} met "
                        f"{weak}, and the strong model must be better on them overall")
    test_prompts = [test.prompts[i] for i in test_rows]
    seeds = list(seeds)
    usable = sorted({n for n in sizes if 0 < n <= len(pool.prompts)})
    dropped = sorted({n for n in sizes if n > len(pool.prompts)})
    if not usable:
        raise DataError(f"no training size fits: {len(pool.prompts)} prompts outside the test "
                        f"split, sizes asked {sorted(sizes)}")
    params = params or {}
    shipped_params = shipped_params or params
    unknown = set(modes) - set(MODES)
    if unknown:
        raise SwitchLLMError(f"unknown learning-curve modes {sorted(unknown)}; known: {MODES}")
    shipped = "shipped_only" in modes
    modes = [m for m in modes if m != "shipped_only"]
    runs = len(kinds) * (len(seeds) * len(usable) * len(modes) + int(shipped))
    bar = tqdm(total=runs, desc="learning curve", unit="fit", disable=not progress)
    curves: dict[str, Any] = {}
    for kind in kinds:
        kind_params = params.get(kind, {})
        big_params = shipped_params.get(kind, {})
        values: dict[str, dict[int, list[float | None]]] = {m: {n: [] for n in usable}
                                                           for m in modes}
        for seed in seeds:
            order = np.random.default_rng(seed).permutation(len(pool.prompts))
            for n in usable:
                keep = np.zeros(len(pool.prompts), dtype=bool)
                keep[order[:n]] = True
                sample = pool.select_prompts(keep)
                for mode in modes:
                    data = (sample if mode == "own"
                            else with_shipped(sample, weight, exclude, strong, weak))
                    values[mode][n].append(_score(
                        kind, kind_params if mode == "own" else big_params, data,
                        test_prompts, strong, weak, gains))
                    bar.update(1)
        entry: dict[str, Any] = {mode: {str(n): _summary(v) for n, v in per_size.items()}
                                 for mode, per_size in values.items()}
        if shipped:
            from switchllm.data.benchmarks import router_training_battles

            entry["shipped_only"] = _summary([_score(
                kind, big_params, router_training_battles(exclude, strong, weak),
                test_prompts, strong, weak, gains)])
            bar.update(1)
        curves[kind] = entry
    bar.close()
    return {"pair": {"strong": strong, "weak": weak}, "test_prompts": len(test_prompts),
            "pool_prompts": len(pool.prompts), "test_fraction": test_fraction,
            "split_seed": split_seed, "seeds": seeds, "sizes": usable,
            "sizes_too_large": dropped, "weight": weight if "with_shipped" in modes else None,
            "excluded_shipped_sets": sorted(exclude), "curves": curves}


def _score(kind: str, params: dict[str, Any], data: Battles, test_prompts: list[str],
           strong: str, weak: str, gains: np.ndarray) -> float | None:
    if strong not in data.models or weak not in data.models:
        return None  # a sample where the pair never met: the router cannot answer for it
    rates = np.asarray(_fit(kind, params, data).win_rate(test_prompts, strong, weak))
    return apgr(rates, gains)


def _summary(values: list[float | None]) -> dict[str, Any]:
    known = [v for v in values if v is not None]
    return {"mean": round(float(np.mean(known)), 5) if known else None,
            "std": round(float(np.std(known)), 5) if len(known) > 1 else None,
            "values": [None if v is None else round(v, 5) for v in values]}


def plot_learning_curve(results: dict[str, Any], path: Path, title: str) -> None:
    """Held-out APGR against labelled prompts (log x): one line per router and mode."""
    from switchllm.evaluation.plots import _pyplot

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    sizes = results["sizes"]
    for index, (kind, entry) in enumerate(results["curves"].items()):
        color = f"C{index}"
        for mode, style in (("own", "-"), ("with_shipped", "--")):
            if mode not in entry:
                continue
            means = [entry[mode][str(n)]["mean"] for n in sizes]
            label = f"{kind}, your labels" + (" + shipped sets" if mode == "with_shipped"
                                               else " only")
            ax.plot(sizes, [np.nan if m is None else m for m in means], style, marker="o",
                    color=color, label=label)
        if entry.get("shipped_only", {}).get("mean") is not None:
            ax.axhline(entry["shipped_only"]["mean"], color=color, linestyle=":",
                       label=f"{kind}, shipped sets only")
    ax.axhline(0.5, color="black", alpha=0.5, linestyle="-.", label="random (0.5)")
    ax.set_xscale("log")
    ax.set_xticks(sizes, [str(n) for n in sizes])
    ax.set_xlabel("labelled prompts used for training")
    ax.set_ylabel(f"held-out APGR ({results['test_prompts']} test prompts)")
    seeds = len(results["seeds"])
    ax.set_title(f"{title}: {results['pair']['strong']} vs {results['pair']['weak']}"
                 + (f", mean of {seeds} samples" if seeds > 1 else ""))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
