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


def main() -> None:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else "docs/results")
    for mode in sorted(p for p in root.iterdir() if p.is_dir()):
        print(f"### {mode.name}\n")
        for path in sorted(mode.glob("*.json")):
            print(table(path) + "\n")


if __name__ == "__main__":
    main()
