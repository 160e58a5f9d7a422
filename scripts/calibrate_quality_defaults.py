"""Add the score -> P(win) quality calibration (switchllm.routers.choice) to the shipped default
cards without retraining them: fitted on the same validation split `scripts/train_defaults.py`
held out (5% of the training sets' prompts, seed 0; never MT-Bench), and written into each
card's router.json as `quality_calibration`.

    python scripts/calibrate_quality_defaults.py            # mf, sw_ranking, knn
    python scripts/calibrate_quality_defaults.py bert       # bert too (a CPU forward pass, minutes)
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from switchllm.data.benchmarks import router_training_battles
from switchllm.routers import DEFAULTS_DIR, load_card
from switchllm.routers.base import CARD_JSON
from switchllm.routers.choice import fit_quality_calibration
from switchllm.training import split_by_prompt

KINDS = ("mf", "sw_ranking", "knn", "bert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("kinds", nargs="*", help=f"some of {', '.join(KINDS)}")
    args = parser.parse_args()
    args.kinds = args.kinds or ["mf", "sw_ranking", "knn"]
    if set(args.kinds) - set(KINDS):
        parser.error(f"unknown kinds {sorted(set(args.kinds) - set(KINDS))}; known: {KINDS}")
    battles = router_training_battles()
    for kind in args.kinds:
        card_dir = DEFAULTS_DIR / kind
        card = json.loads((card_dir / CARD_JSON).read_text())
        training = card["training"]
        data = battles
        if kind == "bert":  # the same prompt sample train_defaults.py fine-tuned on
            rng = np.random.default_rng(training["seed"])
            keep = np.zeros(len(battles.prompts), dtype=bool)
            keep[rng.choice(len(battles.prompts), training["prompts"], replace=False)] = True
            data = battles.select_prompts(keep)
        if data.fingerprint() != card["fingerprint"]:
            raise SystemExit(f"{kind}: the shipped data changed since the card was trained")
        _, val = split_by_prompt(data, training["val_fraction"], training["seed"])
        assert val is not None
        router = load_card(card_dir)
        calibration = fit_quality_calibration(router, val)
        calibration["source"] = "validation"
        card["quality_calibration"] = calibration
        tmp = card_dir / (CARD_JSON + ".tmp")
        tmp.write_text(json.dumps(card, indent=2) + "\n")
        tmp.replace(card_dir / CARD_JSON)
        print(f"{kind}: calibrated on {len(val.prompts)} validation prompts, "
              f"{len(calibration['models'])} models with their own map")


if __name__ == "__main__":
    main()
