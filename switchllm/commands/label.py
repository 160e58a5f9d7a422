"""`switchllm label PROMPTS --config serving.yaml --models A,B (--judge NAME | --check ...)
--output OUT.jsonl`: answer each prompt with every candidate model and label the answers with
an LLM judge (pairwise battles or 1-10 scores) or against a reference answer (golden labels),
writing rows `switchllm train --data OUT.jsonl` reads. See docs/LABELLING.md."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from switchllm.errors import SwitchLLMError

EXIT_COST_CAP = 3
EXIT_FAILED = 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="?", metavar="PROMPTS",
                        help="prompts file (.jsonl, .json, .csv or .txt)")
    parser.add_argument("--from-log", nargs="?", const="", default=None, metavar="LOG",
                        help="label the prompts logged by `switchllm serve --log-prompts` "
                             "(an SQLite path or postgresql:// URL; default: the config's log "
                             "url or path, else switchllm-decisions.sqlite)")
    parser.add_argument("--config", required=True, metavar="YAML",
                        help="the serving config that defines the models (as for serve)")
    parser.add_argument("--models", required=True, metavar="A,B[,C...]",
                        help="candidate models, comma separated (two or more)")
    parser.add_argument("--judge", metavar="NAME", help="judge model (judge mode)")
    parser.add_argument("--mode", choices=("pairwise", "single"), default="pairwise",
                        help="judge mode: pairwise battles in both orders (default) or 1-10 "
                             "grading of each answer")
    parser.add_argument("--judge-prompt", metavar="FILE",
                        help="judge prompt template (placeholders: see docs/LABELLING.md)")
    parser.add_argument("--reference-field", metavar="FIELD",
                        help="field of each prompt record holding the reference answer "
                             "(golden mode)")
    parser.add_argument("--check", choices=("exact", "number", "choice", "regex"),
                        help="golden check of each answer against the reference")
    parser.add_argument("--pattern", metavar="REGEX",
                        help="regular expression for --check regex ({reference}: the "
                             "reference, escaped)")
    parser.add_argument("--output", required=True, metavar="OUT.jsonl",
                        help="where to write the labelled rows")
    parser.add_argument("--prompt-field", metavar="F",
                        help="field holding the prompt (default: detected)")
    parser.add_argument("--sample", type=int, metavar="N", help="label N prompts drawn at random")
    parser.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    parser.add_argument("--no-dedup", action="store_true",
                        help="keep repeated prompts (default: each prompt once)")
    parser.add_argument("--concurrency", type=int, default=32,
                        help="upstream calls in flight at once (default 32)")
    parser.add_argument("--max-cost", type=float, metavar="USD",
                        help="stop before the total cost would pass this many dollars")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the number of calls and the estimated cost, call nothing")
    parser.add_argument("--cache", metavar="DIR",
                        help="cache of answers and verdicts (default: .switchllm-label-cache/ "
                             "next to the output)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def build_job(args: argparse.Namespace):  # noqa: ANN201 - LabelJob, imported lazily
    from switchllm.labelling.golden import compile_pattern
    from switchllm.labelling.judge import judge_prompt
    from switchllm.labelling.prompts import logged_prompt_items, read_prompts, select
    from switchllm.labelling.runner import CACHE_DIR_NAME, LabelJob
    from switchllm.serving.config import DEFAULT_LOG_PATH, load_yaml

    judged = args.judge is not None
    golden = args.check is not None or args.reference_field is not None
    if judged == golden:
        raise SwitchLLMError("choose one labelling mode: --judge NAME (judge mode) or "
                             "--reference-field FIELD --check CHECK (golden mode)")
    if golden and args.check is None:
        raise SwitchLLMError("golden mode needs --check exact|number|choice|regex")
    if golden and args.reference_field is None and args.check != "regex":
        raise SwitchLLMError(f"--check {args.check} needs --reference-field FIELD")
    if args.check == "regex":
        if not args.pattern:
            raise SwitchLLMError("--check regex needs --pattern REGEX")
        compile_pattern(args.pattern)
    if (args.prompts is None) == (args.from_log is None):
        raise SwitchLLMError("give a PROMPTS file or --from-log, not both or neither")
    if args.max_cost is not None and args.max_cost <= 0:
        raise SwitchLLMError(f"--max-cost must be positive, got {args.max_cost}")

    raw = load_yaml(args.config)
    models = _models(args.config, raw)
    candidates = [m.strip() for m in args.models.split(",") if m.strip()]
    if len(candidates) < 2 or len(set(candidates)) != len(candidates):
        raise SwitchLLMError(f"--models needs two or more different models, got {args.models!r}")
    wanted = candidates + ([args.judge] if judged else [])
    unknown = [m for m in wanted if m not in models]
    if unknown:
        raise SwitchLLMError(
            f"model(s) {', '.join(unknown)} not in {args.config}'s models "
            f"(configured: {', '.join(models) or 'none'})"
        )

    if args.from_log is not None:
        if golden and args.check != "regex":
            raise SwitchLLMError("golden mode needs a reference answer per prompt; the "
                                 "decision log has none (use a PROMPTS file)")
        log = raw.get("log") if isinstance(raw.get("log"), dict) else {}
        path = (args.from_log or (log or {}).get("url") or (log or {}).get("path")
                or DEFAULT_LOG_PATH)
        items = logged_prompt_items(path)
    else:
        items = read_prompts(args.prompts, args.prompt_field)
    items = select(items, dedup=not args.no_dedup, sample=args.sample, seed=args.seed)

    output = Path(args.output)
    server = raw.get("server") if isinstance(raw.get("server"), dict) else {}
    return LabelJob(
        items=items, candidates=candidates, models={m: models[m] for m in wanted},
        mode=args.mode if judged else "golden", output=output,
        cache_dir=Path(args.cache) if args.cache else output.parent / CACHE_DIR_NAME,
        judge=args.judge, judge_prompt=judge_prompt(args.mode, args.judge_prompt)
        if judged else None, check=args.check, reference_field=args.reference_field,
        pattern=args.pattern, concurrency=args.concurrency, max_cost=args.max_cost,
        timeout=float((server or {}).get("timeout", 120.0)),
    )


def _models(config: str, raw: dict):  # noqa: ANN202 - dict[str, ModelSpec]
    """The models of a serving config, parsed exactly as `serve` parses them."""
    from switchllm.serving.config import ConfigError, build_config

    names = list((raw.get("models") or {}) if isinstance(raw.get("models"), dict) else {})
    if len(names) < 2:
        raise ConfigError(f"{config}: needs a models section with two or more models")
    # serve's parser needs a strong/weak pair and a router; labelling uses only the models
    cfg = build_config(config_path=config, raw=raw, strong_model=names[0],
                       weak_model=names[1], routers={"random": "random"})
    return {name: cfg.models[name] for name in names}


def run(args: argparse.Namespace) -> int:
    from switchllm.labelling.runner import (
        ASSUMED_ANSWER_TOKENS,
        ASSUMED_VERDICT_TOKENS,
        LabelRunner,
        calls_per_prompt,
    )

    job = build_job(args)
    runner = LabelRunner(job, progress=not args.quiet)
    per_prompt = calls_per_prompt(job.mode, len(job.candidates))
    if args.dry_run:
        estimate = runner.dry_run()
        print(f"{estimate['prompts']} prompts, {per_prompt} calls per prompt ({job.mode}): "
              f"{estimate['calls']} calls to make, {estimate['cached']} already cached")
        print(f"assumed: prompt tokens = characters / 4; answers {ASSUMED_ANSWER_TOKENS} "
              f"tokens, judge verdicts {ASSUMED_VERDICT_TOKENS} tokens")
        for model, entry in estimate["models"].items():
            print(f"  {model:24s} {int(entry['calls']):7d} calls  "
                  f"{int(entry['input_tokens']):10d} in  {int(entry['output_tokens']):9d} out  "
                  f"${entry['cost']:.4f}")
        print(f"estimated cost ${estimate['cost']:.4f} "
              f"(${estimate['cost_per_1000_prompts']:.2f} per 1,000 prompts)")
        return 0
    if not job.items:
        raise SwitchLLMError("no prompts to label")
    try:
        report = asyncio.run(runner.run())
    except KeyboardInterrupt:
        report = runner.report
        print(f"interrupted: {report.done} of {report.prompts} prompts labelled, "
              f"${report.cost:.4f} so far; rerun the same command to resume (answers are "
              "cached)", file=sys.stderr)
        return 130
    print(f"labelled {report.done} of {report.prompts} prompts -> {report.rows} rows in "
          f"{job.output}; {report.calls} calls made, {report.cached_calls} from the cache; "
          f"cost ${report.cost:.4f} (this run ${report.new_cost:.4f})")
    if report.failed:
        shown = "; ".join(dict.fromkeys(report.errors[:20]))
        print(f"{report.failed} prompts failed after retries ({shown}); rerun to retry them",
              file=sys.stderr)
    if report.stopped_by_cost:
        print(f"stopped at the cost cap: --max-cost ${job.max_cost:.4f} reached after "
              f"{report.done} of {report.prompts} prompts; raise it and rerun to continue "
              "(cached answers are reused, not paid again)", file=sys.stderr)
        return EXIT_COST_CAP
    return EXIT_FAILED if report.failed else 0
