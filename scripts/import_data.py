"""Copy the routing data the product needs from a raw data folder into `switchllm/data/sets/`.

Usage: python scripts/import_data.py [--source /work/shared/data] [--dest switchllm/data/sets]

What is kept: prompts, per-model correctness / grades / votes, per-query dollar costs, model
prices and contamination lists. What is dropped: model response texts and judge explanations
(routing never reads them). Files keep their source layout (CSV stays CSV, JSONL stays JSONL) so
each shipped row can be checked against its source, and are gzip-compressed with a fixed mtime so
re-running the script produces byte-identical files. Each set's LICENSE is copied beside it.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path

csv.field_size_limit(sys.maxsize)

ROUTERBENCH_TASKS = ("arc_challenge", "mbpp", "winograde")
# Only the judge fields the loaders read; the judge's explanation and prompt are dropped.
JUDGEMENT_FIELDS = ("question_id", "model", "judge", "turn", "score")


def write_gzip(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0,
                                                filename="") as gz:
        gz.write(text.encode("utf-8"))


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def jsonl_text(rows: Iterable[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)


def csv_text(header: list[str], rows: Iterable[list[str]]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def drop_columns(path: Path, drop: Iterable[str] = (), drop_suffixes: tuple[str, ...] = ()
                 ) -> str:
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        keep = [i for i, name in enumerate(header)
                if name not in set(drop) and not name.endswith(drop_suffixes)]
        return csv_text([header[i] for i in keep], ([row[i] for i in keep] for row in reader))


def import_routellm(src: Path, dest: Path) -> None:
    # MMLU: 57 per-subject CSVs -> one CSV with a subject column.
    header: list[str] | None = None
    rows: list[list[str]] = []
    for path in sorted((src / "mmlu" / "responses").glob("mmlu_*.csv")):
        subject = path.stem.removeprefix("mmlu_")
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            file_header = next(reader)
            if header is None:
                header = file_header
            elif file_header != header:
                raise SystemExit(f"{path}: columns {file_header} differ from {header}")
            rows.extend([*row, subject] for row in reader)
    assert header is not None
    write_gzip(dest / "mmlu" / "responses.csv.gz", csv_text([*header, "subject"], rows))
    # GSM8K: drop the two response-text columns.
    write_gzip(dest / "gsm8k" / "responses.csv.gz",
               drop_columns(src / "gsm8k" / "gsm8k_responses.csv", drop_suffixes=("_response",)))
    for name in ("mmlu", "gsm8k", "mt_bench"):
        contaminated = read_jsonl(src / name / "contaminated_prompts.jsonl")
        write_gzip(dest / name / "contaminated_prompts.jsonl.gz", jsonl_text(contaminated))
    write_gzip(dest / "mt_bench" / "question.jsonl.gz",
               (src / "mt_bench" / "question.jsonl").read_text())
    judgements = [{k: row[k] for k in JUDGEMENT_FIELDS}
                  for row in read_jsonl(src / "mt_bench" / "judgements.jsonl")]
    write_gzip(dest / "mt_bench" / "judgements.jsonl.gz", jsonl_text(judgements))
    commercial = [{k: row[k] for k in JUDGEMENT_FIELDS} for row in
                  read_jsonl(src / "mt_bench" / "commercial" / "gpt-4_single.jsonl")]
    write_gzip(dest / "mt_bench" / "commercial_judgements.jsonl.gz", jsonl_text(commercial))
    shutil.copyfile(src / "LICENSE", dest / "LICENSE")


def import_routerbench(src: Path, dest: Path) -> None:
    for task in ROUTERBENCH_TASKS:
        for split in ("train", "test"):
            text = drop_columns(src / f"{task}_{split}.csv", drop=("",),
                                drop_suffixes=("|model_response",))
            write_gzip(dest / f"{task}_{split}.csv.gz", text)
    shutil.copyfile(src / "LICENSE", dest / "LICENSE")


def import_llmrouter(src: Path, dest: Path) -> None:
    for split in ("train", "test"):
        rows = json.loads((src / f"{split}.json").read_text())
        write_gzip(dest / f"{split}.json.gz", json.dumps(rows, ensure_ascii=False))
    candidates = json.loads((src / "llm_candidates.json").read_text())
    (dest / "llm_candidates.json").write_text(json.dumps(candidates, indent=1) + "\n")
    shutil.copyfile(src / "LICENSE", dest / "LICENSE")


def import_arena_hard(src: Path, dest: Path) -> None:
    write_gzip(dest / "scores.jsonl.gz", (src / "scores.jsonl").read_text())
    shutil.copyfile(src / "LICENSE", dest / "LICENSE")


def import_mt_bench_human(src: Path, dest: Path) -> None:
    # The votes only: the judged answers are response text, which routing never reads.
    write_gzip(dest / "human_judgments.jsonl.gz", (src / "human_judgments.jsonl").read_text())
    shutil.copyfile(src / "LICENSE", dest / "LICENSE")


IMPORTERS = {
    "routellm": import_routellm,
    "routerbench": import_routerbench,
    "llmrouter": import_llmrouter,
    "arena-hard-v1": import_arena_hard,
    "mt-bench-human": import_mt_bench_human,
}


def main() -> None:
    root = Path(__file__).resolve().parent.parent
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/data"))
    parser.add_argument("--dest", type=Path, default=root / "switchllm" / "data" / "sets")
    args = parser.parse_args()
    for name, importer in IMPORTERS.items():
        src = args.source / name
        if not src.is_dir():
            raise SystemExit(f"missing source folder {src}")
        dest = args.dest / name
        dest.mkdir(parents=True, exist_ok=True)
        importer(src, dest)
        size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
        print(f"{name}: {size / 1e6:.2f} MB -> {dest}")


if __name__ == "__main__":
    main()
