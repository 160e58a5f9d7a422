"""Writing and printing `switchllm eval --n-models` results: DIR/<benchmark>_n_models.json,
the cost-quality plot (`_n_models.png`), the calibration's reliability plot
(`_n_models_reliability.png`) and a table per benchmark."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from switchllm.evaluation.n_model_eval import evaluate_n_models
from switchllm.evaluation.n_models import plot


def run_n_models(name: str, kinds: list[str], cv: int | None, seed: int, output: Path
                 ) -> tuple[dict[str, Any], list[Path]]:
    mode = "held-out" if cv is None else "cv"
    report = evaluate_n_models(name, kinds, mode, cv or 5, seed)
    stem = output / f"{name}_n_models"
    paths = [stem.with_suffix(".json"), output / f"{name}_n_models.png",
             output / f"{name}_n_models_reliability.png"]
    paths[0].write_text(json.dumps(report, indent=1) + "\n")
    how = "trained on the train split" if cv is None else f"{cv}-fold CV"
    plot(report, f"{name} test, {len(report['models'])} models ({how})", str(paths[1]))
    plot_reliability(report, f"{name}: calibration of predicted quality ({how})", paths[2])
    return report, paths


def plot_reliability(report: dict[str, Any], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    ax.plot([0, 1], [0, 1], "k--", linewidth=1, label="perfect calibration")
    for name, entry in report["routers"].items():
        if name == "random":
            continue  # uniform noise, not a calibrated prediction
        rows = entry["reliability"]["bins"]
        ax.plot([r["predicted"] for r in rows], [r["observed"] for r in rows], "o-",
                markersize=4, label=f"{name} (ECE {entry['reliability']['ece']:.3f})")
    ax.set_xlabel("predicted quality (per prompt and model)")
    ax.set_ylabel("observed quality")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _money(value: float | None) -> str:
    return "n/a" if value is None else f"${value:.5f}"


def print_report(report: dict[str, Any]) -> None:
    best = report["best_single"]
    how = ("trained on the train split, measured on the test split" if report["mode"] ==
           "held-out" else f"{report['folds']}-fold CV on the test split")
    print(f"\n{report['benchmark']} with {len(report['models'])} models: {report['n_prompts']} "
          f"prompts, {how}")
    print(f"  best single model {best['model']}: quality {best['quality']:.3f} at "
          f"{_money(best['cost'])}/query; Zero router AIQ {report['zero_router']['aiq']:.3f}; "
          f"oracle {report['oracle']['quality']:.3f} at {_money(report['oracle']['cost'])}")
    header = (f"  {'router':<10} {'val AIQ':>8} {'AIQ':>7} {'above hull':>10} "
              f"{'q@best $':>9} {'$ to match':>11} {'share':>6} {'max-q gain':>10} {'ECE':>6}")
    print(header)
    for name, r in report["routers"].items():
        share = r["cost_share_of_best_single"]
        val = r.get("validation_aiq")
        print(f"  {name:<10} {'' if val is None else f'{val:.3f}':>8} {r['aiq']:>7.3f} "
              f"{100 * r['above_zero_share']:>9.1f}% {r['quality_at_best_single_cost']:>9.3f} "
              f"{_money(r['cost_to_match_best_single']):>11} "
              f"{'n/a' if share is None else f'{100 * share:.0f}%':>6} "
              f"{r['max_quality_gain_points']:>+9.2f}p {r['reliability']['ece']:>6.3f}")
    chosen = report.get("chosen_on_validation")
    if chosen:
        print(f"  chosen on validation AIQ: {chosen}")
        tasks = report["routers"][chosen]["max_quality_by_task"]
        if len(tasks) > 1:
            print(f"  max-quality mode per task ({chosen}): " + "; ".join(
                f"{t} {100 * v['router']:.1f} (best single {v['best_single_model']} "
                f"{100 * v['best_single']:.1f}, oracle {100 * v['oracle']:.1f})"
                for t, v in tasks.items()))
