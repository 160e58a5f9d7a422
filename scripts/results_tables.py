"""Print the markdown tables of docs/RESULTS.md from `switchllm eval` JSON results.

    python scripts/results_tables.py docs/results
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def table(path: Path) -> str:
    result = json.loads(path.read_text())
    refs = result["references"]
    lines = [
        f"**{result['benchmark']}** ({result['n_prompts']} prompts; strong "
        f"{refs['strong']['model']} {refs['strong']['quality']:.2f}, weak "
        f"{refs['weak']['model']} {refs['weak']['quality']:.2f})",
        "",
        "| router | APGR | CPT(50%) | CPT(80%) | AUC |",
        "|---|---|---|---|---|",
    ]
    rows = list(result["routers"].items())
    rows += [("random (10 seeds)", refs["random"]), ("oracle", refs["oracle"])]
    for name, m in rows:
        lines.append(f"| {name} | {m['apgr']:.3f} | {m['cpt50']:.1f}% | {m['cpt80']:.1f}% | "
                     f"{m['auc']:.2f} |")
    return "\n".join(lines)


def n_model_table(result: dict) -> str:
    """An `eval --n-models` result: AIQ, hull share, cost to match the best model, max-quality
    gain and ECE per router."""
    best = result["best_single"]
    lines = [f"**{result['benchmark']}** ({result['n_prompts']} prompts, {len(result['models'])} "
             f"models, {result['mode']}; best single {best['model']} {best['quality']:.3f} at "
             f"${best['cost']:.5f}; Zero router AIQ {result['zero_router']['aiq']:.3f})", "",
             "| router | val AIQ | AIQ | above hull | cost to match best | max-q gain | ECE |",
             "|---|---|---|---|---|---|---|"]
    for name, r in result["routers"].items():
        share = r["cost_share_of_best_single"]
        val = r.get("validation_aiq")
        lines.append(f"| {name} | {'' if val is None else f'{val:.3f}'} | {r['aiq']:.3f} | "
                     f"{100 * r['above_zero_share']:.1f}% | "
                     f"{'never' if share is None else f'{100 * share:.0f}%'} | "
                     f"{r['max_quality_gain_points']:+.2f} | {r['reliability']['ece']:.3f} |")
    return "\n".join(lines)


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    for mode in sorted(p for p in root.iterdir() if p.is_dir()):
        print(f"### {mode.name}\n")
        for path in sorted(mode.glob("*.json")):
            result = json.loads(path.read_text())
            if "zero_router" in result:
                print(n_model_table(result) + "\n")
            elif "references" in result:  # a pair evaluation (not a learning curve)
                print(table(path) + "\n")


if __name__ == "__main__":
    main()
