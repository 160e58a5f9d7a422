"""Plots of evaluation results (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_quality(results: dict[str, Any], path: Path) -> None:
    """Quality against the share of calls to the strong model: each router, the random and
    oracle references, and the weak and strong models as horizontal lines."""
    plt = _pyplot()
    refs = results["references"]
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for name, entry in results["routers"].items():
        curve = entry["curve"]
        ax.plot(curve["strong_pct"], curve["quality"], marker=".", markersize=3,
                label=f"{name} (APGR {entry['apgr']:.3f})")
    labels = {"random": f"random, mean of {refs['random'].get('seeds', 10)} seeds",
              "oracle": "oracle (best achievable)"}
    for key, style in (("random", ":"), ("oracle", "-.")):
        curve = refs[key]["curve"]
        ax.plot(curve["strong_pct"], curve["quality"], linestyle=style, color="black",
                alpha=0.6, label=f"{labels[key]} (APGR {refs[key]['apgr']:.3f})")
    ax.axhline(refs["strong"]["quality"], color="tab:red", linestyle="--",
               label=f"strong: {refs['strong']['model']}")
    ax.axhline(refs["weak"]["quality"], color="grey", linestyle="--",
               label=f"weak: {refs['weak']['model']}")
    ax.set_xlabel("Strong model calls (%)")
    ax.set_ylabel(results["quality_label"])
    mode = "" if results["mode"] == "plain" else f", {results['mode']}"
    ax.set_title(f"{results['benchmark']}: quality vs strong-model calls "
                 f"({results['n_prompts']} prompts{mode})")
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_cost_quality(results: dict[str, Any], path: Path) -> None:
    """Quality against mean dollar cost per query: every single model as a point and each
    router's curve between the weak and the strong model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for model, point in results["cost"]["models"].items():
        ax.scatter(point["cost"], point["quality"], color="black", s=18, zorder=3)
        ax.annotate(model.split("/")[-1], (point["cost"], point["quality"]), fontsize=7,
                    xytext=(3, 3), textcoords="offset points")
    for name, entry in results["routers"].items():
        curve = entry["curve"]
        label = name if "aiq" not in entry else f"{name} (AIQ {entry['aiq']:.3g})"
        ax.plot(curve["cost"], curve["quality"], marker=".", markersize=3, label=label)
    ax.set_xscale("log")
    ax.set_xlabel("Mean cost per query (US $, log scale)")
    ax.set_ylabel(results["quality_label"])
    pair = results["pair"]
    ax.set_title(f"{results['benchmark']}: cost vs quality "
                 f"(routing {pair['strong']} / {pair['weak']})", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
