"""What choosing among N models adds per request over pair routing, for the same router.

    PYTHONPATH=. python bench/n_models.py [--router mf] [--models 11] [--calls 300]

Both paths score one prompt per call on the same prompts (shipped MMLU sample) with their
embeddings already cached, so the difference is the choice itself: scoring all models,
calibration, expected cost and ranking, against one pair's win rate. Prints p50/p95 of each and
the p50 difference (target: <= 1 ms).
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from switchllm.routers import load_router  # noqa: E402
from switchllm.routers.choice import ModelChooser, Objective  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", default="mf")
    parser.add_argument("--models", type=int, default=11)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    from tests.routers_fixtures import mmlu_battles

    prompts = mmlu_battles().prompts[: args.calls]
    router = load_router(args.router)
    models = router.models[: args.models]
    strong, weak = router.default_pair
    prices = {m: float(i + 1) for i, m in enumerate(models)}
    chooser = ModelChooser(router, models, prices, prices,
                           Objective("willingness_to_pay", 100.0))
    router.win_rate(prompts, strong, weak)  # embed every prompt once (cache)

    def timed(call) -> np.ndarray:  # noqa: ANN001
        out = []
        for p in prompts:
            started = time.perf_counter()
            call(p)
            out.append((time.perf_counter() - started) * 1000)
        return np.array(out)

    pair = timed(lambda p: router.win_rate([p], strong, weak))
    choice = timed(lambda p: chooser.choose([p]))
    pair, choice = timed(lambda p: router.win_rate([p], strong, weak)), timed(
        lambda p: chooser.choose([p]))  # second round: both warm
    print(f"{args.router}, {len(models)} models, {len(prompts)} calls (ms per request)")
    print(f"pair routing   p50 {np.median(pair):.3f}  p95 {np.percentile(pair, 95):.3f}")
    print(f"choose among N p50 {np.median(choice):.3f}  p95 {np.percentile(choice, 95):.3f}")
    print(f"added p50 {np.median(choice) - np.median(pair):.3f} ms")
    # What micro-batching route-group decisions buys: 32 concurrent requests chosen in one
    # call (as the server's MicroBatcher does) against one call each.
    batch = prompts[:32]
    started = time.perf_counter()
    for _ in range(5):
        chooser.choose(batch)
    batched = (time.perf_counter() - started) / (5 * len(batch)) * 1000
    print(f"choose among N, 32 prompts per call: {batched:.3f} ms per request")


if __name__ == "__main__":
    main()
