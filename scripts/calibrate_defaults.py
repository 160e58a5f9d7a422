"""Recalibrate the shipped default cards' win-rate quantiles on chat-like prompts.

RouteLLM calibrated its thresholds on Chatbot Arena prompts; a card's `-s<share>` names
(`router-mf-s0.3`) should mean the same share of *chat* traffic. This computes each card's win
rates (its default pair) on the shipped chat-like prompts and stores their quantiles:

- `calibration` (used by `-s<share>` and `switchllm calibrate`): the LLMRouter test split
  (held out from every default card) plus the Arena-Hard v1 prompts (user questions from
  Chatbot Arena);
- `calibration_sets`: the same quantiles per set, plus the card's original validation-split
  calibration, for users whose traffic looks like one set.

MT-Bench is never used (it is the held-out benchmark).

    python scripts/calibrate_defaults.py            # all shipped cards
    python scripts/calibrate_defaults.py mf knn
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from switchllm.data.benchmarks import load_benchmark
from switchllm.routers import DEFAULTS_DIR, load_card
from switchllm.routers.base import CALIBRATION_LEVELS

KINDS = ("mf", "sw_ranking", "knn", "bert")
SETS = {
    "llmrouter": "LLMRouter test split (never trained on)",
    "arena-hard": "Arena-Hard v1 prompts (Chatbot Arena questions; in the training data)",
}


def quantiles(rates: np.ndarray, source: str) -> dict:
    return {"levels": CALIBRATION_LEVELS.tolist(),
            "quantiles": np.quantile(rates, CALIBRATION_LEVELS).round(6).tolist(),
            "n_prompts": int(len(rates)), "source": source}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", metavar="KIND", help=f"of {', '.join(KINDS)}")
    args = parser.parse_args()
    unknown = set(args.kinds) - set(KINDS)
    if unknown:
        parser.error(f"unknown kinds {sorted(unknown)}; shipped: {', '.join(KINDS)}")
    prompts = {name: list(load_benchmark(name).prompts) for name in SETS}
    for kind in args.kinds or KINDS:
        path = DEFAULTS_DIR / kind / "router.json"
        card = json.loads(path.read_text())
        router = load_card(DEFAULTS_DIR / kind)
        sets = {}
        rates = {}
        for name, source in SETS.items():
            rates[name] = np.asarray(router.win_rate(prompts[name]), dtype=float)
            sets[name] = quantiles(rates[name], source)
        previous = card.get("calibration_sets", {}).get("validation") or card["calibration"]
        sets["validation"] = previous
        chat = quantiles(np.concatenate(list(rates.values())),
                         "chat: " + " + ".join(SETS[n] for n in SETS))
        chat["pair"] = card["calibration"].get("pair", card["default_pair"])
        card["calibration"] = chat
        card["calibration_sets"] = sets
        path.write_text(json.dumps(card, indent=2) + "\n")
        q = chat["quantiles"]
        print(f"{kind}: chat win rates {q[0]:.4f}..{q[-1]:.4f}, median {q[50]:.4f} "
              f"(validation median {previous['quantiles'][50]:.4f})")


if __name__ == "__main__":
    main()
