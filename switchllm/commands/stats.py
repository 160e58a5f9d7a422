"""`switchllm stats`: summarise the decision log: requests, strong share, fallbacks, errors,
latency, and cost against sending everything to the strong model; for route groups, the chosen
models, predicted quality, expected and actual cost, and the saving against the group's best
model."""

from __future__ import annotations

import argparse
from collections import defaultdict
from typing import Any

import numpy as np

from switchllm.serving import DEFAULT_LOG_PATH


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--log", default=DEFAULT_LOG_PATH,
                        help="decision log: SQLite path or postgresql:// URL")


def summarise(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        groups[record["router"] or "(direct)"].append(record)
        groups["ALL"].append(record)
    rows = []
    for name, group in groups.items():
        ok = [r for r in group if r["status"] == 200]
        strong = [r for r in ok if r["model"] == r["strong_model"]]
        cost = sum(r["cost_usd"] or 0.0 for r in ok)
        strong_cost = sum(r["strong_cost_usd"] or 0.0 for r in ok)
        latencies = np.array([r["latency_ms"] for r in ok if r["latency_ms"] is not None])
        rows.append({
            "router": name,
            "requests": len(group),
            "ok": len(ok),
            "errors": len(group) - len(ok),
            "fallbacks": sum(1 for r in ok if r["fallback"]),
            "strong_share": len(strong) / len(ok) if ok else 0.0,
            "cost": cost,
            "always_strong_cost": strong_cost,
            "saving": 1.0 - cost / strong_cost if strong_cost > 0 else 0.0,
            "p50_ms": float(np.percentile(latencies, 50)) if latencies.size else 0.0,
            "p95_ms": float(np.percentile(latencies, 95)) if latencies.size else 0.0,
        })
    rows.sort(key=lambda row: (row["router"] == "ALL", row["router"]))
    return rows


def summarise_groups(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per route group and chosen model: requests, mean predicted quality, expected and actual
    cost, and the saving against always using the group's best model."""
    rows = []
    by_key: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        if record.get("route_group") and record["status"] == 200:
            by_key[(record["route_group"], record["model"])].append(record)
            by_key[(record["route_group"], "ALL")].append(record)
    for (group, model), items in sorted(by_key.items(), key=lambda kv: (kv[0][0],
                                                                         kv[0][1] == "ALL",
                                                                         kv[0][1])):
        cost = sum(r["cost_usd"] or 0.0 for r in items)
        best = sum(r["best_cost_usd"] or 0.0 for r in items)
        quality = [r["predicted_quality"] for r in items if r["predicted_quality"] is not None]
        rows.append({
            "group": group, "model": model, "requests": len(items),
            "predicted_quality": float(np.mean(quality)) if quality else 0.0,
            "expected_cost": sum(r["expected_cost_usd"] or 0.0 for r in items),
            "cost": cost, "best_cost": best,
            "saving": 1.0 - cost / best if best > 0 else 0.0,
        })
    return rows


def print_groups(records: list[dict[str, Any]]) -> None:
    rows = summarise_groups(records)
    if not rows:
        return
    print()
    print(f"{'group':<14}{'model':<24}{'requests':>9}{'pred. q':>9}{'expected $':>12}"
          f"{'cost $':>12}{'best-only $':>13}{'saving':>8}")
    for row in rows:
        print(f"{row['group'][:13]:<14}{row['model'][:23]:<24}{row['requests']:>9}"
              f"{row['predicted_quality']:>9.3f}{row['expected_cost']:>12.4f}{row['cost']:>12.4f}"
              f"{row['best_cost']:>13.4f}{row['saving']:>8.1%}")


def run(args: argparse.Namespace) -> int:
    from switchllm.serving import read_records

    records = list(read_records(args.log))
    if not records:
        from switchllm.serving.log_store import shown

        print(f"{shown(args.log)}: no requests logged yet")
        return 0
    header = (f"{'router':<14}{'requests':>9}{'errors':>8}{'fallback':>9}{'strong':>8}"
              f"{'cost $':>12}{'strong-only $':>15}{'saving':>8}{'p50 ms':>9}{'p95 ms':>9}")
    print(header)
    for row in summarise(records):
        print(f"{row['router']:<14}{row['requests']:>9}{row['errors']:>8}{row['fallbacks']:>9}"
              f"{row['strong_share']:>8.1%}{row['cost']:>12.4f}{row['always_strong_cost']:>15.4f}"
              f"{row['saving']:>8.1%}{row['p50_ms']:>9.1f}{row['p95_ms']:>9.1f}")
    print_groups(records)
    return 0
