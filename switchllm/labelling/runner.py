"""The labelling run: answers from every candidate, then judge verdicts or golden checks, with
bounded concurrency, an on-disk cache of every call, a cost cap and incremental output.

Never loses work: every answer and verdict is stored in a SQLite cache (keyed by a hash of the
model and the request body) the moment it arrives, so a killed run resumes where it stopped
and a rerun makes no repeated paid calls. Output rows are written in input order, each batch of
finished prompts with one `write` on a file opened for appending: a kill leaves whole lines.

Never overspends: before each new call its worst-case cost is reserved (a prompt token per
character, the answer `max_tokens` long); a call that could take the total past `max_cost` is not
made. Spending is counted from the `usage` the upstream reports. The total includes calls
answered from the cache (at what they cost when made), so a resumed job keeps to the same cap.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from switchllm.errors import SwitchLLMError
from switchllm.labelling.golden import check_answer
from switchllm.labelling.judge import JudgePrompt, pairwise_winner, parse_pairwise, parse_rating
from switchllm.labelling.prompts import PromptItem
from switchllm.serving.config import ModelSpec
from switchllm.serving.upstream import UpstreamError, Upstreams

ANSWER_MAX_TOKENS = 1024
JUDGE_MAX_TOKENS = 1024
# what the dry run assumes a call returns (real answers are usually shorter than max_tokens)
ASSUMED_ANSWER_TOKENS = 300
ASSUMED_VERDICT_TOKENS = 150
CHARS_PER_TOKEN = 4
LABEL_RETRIES = 6  # extra attempts per call on 429/5xx/connection errors
LABEL_BACKOFF_S = 0.25  # doubled per retry, with jitter; Retry-After wins when longer
MAX_RETRY_AFTER_S = 120.0
CACHE_DIR_NAME = ".switchllm-label-cache"


class CostCapReached(Exception):
    """A new call would take the total cost past --max-cost."""


# ---- cache ---------------------------------------------------------------------------------
def request_key(model: str, body: dict[str, Any]) -> str:
    """The cache key of a call: a hash of the model name and the request body."""
    blob = json.dumps({"model": model, "body": body}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


@dataclass
class CachedCall:
    content: str
    prompt_tokens: int
    completion_tokens: int
    cost: float


class CallCache:
    """Answers and verdicts on disk (SQLite, one committed row per call; no keys stored)."""

    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory) / "calls.sqlite"
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = sqlite3.connect(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # survives a killed process
            self.db.execute(
                "CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, model TEXT NOT NULL, "
                "content TEXT NOT NULL, prompt_tokens INTEGER, completion_tokens INTEGER, "
                "cost REAL NOT NULL)"
            )
            self.db.commit()
        except (OSError, sqlite3.Error) as exc:
            raise SwitchLLMError(f"cannot open the label cache {self.path}: {exc}") from exc

    def get(self, key: str) -> CachedCall | None:
        row = self.db.execute(
            "SELECT content, prompt_tokens, completion_tokens, cost FROM calls WHERE key = ?",
            (key,),
        ).fetchone()
        return CachedCall(*row) if row else None

    def put(self, key: str, model: str, call: CachedCall) -> None:
        self.db.execute(
            "INSERT OR REPLACE INTO calls VALUES (?, ?, ?, ?, ?, ?)",
            (key, model, call.content, call.prompt_tokens, call.completion_tokens, call.cost),
        )
        self.db.commit()

    def keys(self) -> set[str]:
        return {row[0] for row in self.db.execute("SELECT key FROM calls")}

    def close(self) -> None:
        self.db.close()


# ---- the job -------------------------------------------------------------------------------
@dataclass
class LabelJob:
    """What to label and how. `mode` is pairwise, single or golden."""

    items: list[PromptItem]
    candidates: list[str]
    models: dict[str, ModelSpec]  # candidates and judge
    mode: str
    output: Path
    cache_dir: Path
    judge: str | None = None
    judge_prompt: JudgePrompt | None = None
    check: str | None = None
    reference_field: str | None = None
    pattern: str | None = None
    concurrency: int = 32
    max_cost: float | None = None
    timeout: float = 120.0
    connect_timeout: float = 5.0
    retries: int = LABEL_RETRIES
    backoff: float = LABEL_BACKOFF_S


@dataclass
class LabelReport:
    prompts: int
    done: int = 0
    failed: int = 0
    rows: int = 0
    cost: float = 0.0  # all calls used, cached ones at what they cost when made
    new_cost: float = 0.0  # spent by this run
    calls: int = 0  # made by this run
    cached_calls: int = 0
    stopped_by_cost: bool = False
    errors: list[str] = field(default_factory=list)

    @property
    def not_done(self) -> int:
        return self.prompts - self.done - self.failed


def answer_body(item: PromptItem) -> dict[str, Any]:
    return {"messages": item.messages, "max_tokens": ANSWER_MAX_TOKENS}



def judge_body(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return {"messages": messages, "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS}


def body_tokens(body: dict[str, Any]) -> int:
    chars = sum(len(str(m.get("content") or "")) for m in body.get("messages", ()))
    return max(1, chars // CHARS_PER_TOKEN)


def reference_of(item: PromptItem, field_name: str | None) -> str | None:
    if field_name is None:
        return None
    if field_name not in item.record:
        raise SwitchLLMError(
            f"--reference-field {field_name!r} is not in the prompt records (fields: "
            f"{', '.join(sorted(item.record)) or 'none'})"
        )
    value = item.record[field_name]
    return None if value is None else str(value)


class LabelRunner:
    """Runs a LabelJob; `report` tells how far it got, also after an interruption."""

    def __init__(self, job: LabelJob, progress: bool = True) -> None:
        if len(job.candidates) < 2:
            raise SwitchLLMError("label needs at least two candidate models (--models A,B)")
        if job.mode in ("pairwise", "single") and (job.judge is None or
                                                   job.judge_prompt is None):
            raise SwitchLLMError(f"{job.mode} mode needs a judge (--judge NAME)")
        if job.mode == "golden" and job.check is None:
            raise SwitchLLMError("golden mode needs --check")
        if job.concurrency < 1:
            raise SwitchLLMError(f"--concurrency must be at least 1, got {job.concurrency}")
        if job.mode == "golden":
            for item in job.items:  # fail before any call, not halfway
                reference_of(item, job.reference_field)
        self.job = job
        self.progress = progress
        self.report = LabelReport(prompts=len(job.items))
        self._reserved = 0.0
        self._counted: set[str] = set()
        self._in_flight: dict[str, asyncio.Future[str]] = {}

    # ---- calls -------------------------------------------------------------------------
    def estimate(self, model: str, body: dict[str, Any], output_tokens: int) -> float:
        return self.job.models[model].cost(body_tokens(body), output_tokens)

    def reservation(self, model: str, body: dict[str, Any]) -> float:
        """The most a call can cost: no more prompt tokens than characters (plus the chat
        template's overhead), no more output than `max_tokens`."""
        chars = sum(len(str(m.get("content") or "")) + 8 for m in body.get("messages", ()))
        return self.job.models[model].cost(chars + 16, int(body.get("max_tokens") or 0))

    async def call(self, model: str, body: dict[str, Any]) -> str:
        """The answer text of `model` to `body`: from the cache, else from the upstream. The
        same request asked twice at once (two identical answers shown to the judge in both
        orders) is made once."""
        key = request_key(model, body)
        cached = self.cache.get(key)
        if cached is not None:
            self.report.cached_calls += 1
            if key not in self._counted:  # each distinct call counts once towards the cost
                self._counted.add(key)
                self.report.cost += cached.cost
            return cached.content
        pending = self._in_flight.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        task = asyncio.ensure_future(self._fetch(key, model, body))
        self._in_flight[key] = task
        try:
            return await asyncio.shield(task)
        finally:
            if task.done():
                self._in_flight.pop(key, None)

    async def _fetch(self, key: str, model: str, body: dict[str, Any]) -> str:
        async with self.semaphore:
            payload, _ = await self.upstreams.complete_one(model, body)
            content = _content(model, payload)
            usage = payload.get("usage") if isinstance(payload.get("usage"), dict) else {}
            prompt_tokens = _count(usage.get("prompt_tokens"), body_tokens(body))
            completion_tokens = _count(usage.get("completion_tokens"),
                                       max(1, len(content) // CHARS_PER_TOKEN))
            cost = self.job.models[model].cost(prompt_tokens, completion_tokens)
            self.cache.put(key, model,
                           CachedCall(content, prompt_tokens, completion_tokens, cost))
            self._counted.add(key)
            self.report.calls += 1
            self.report.cost += cost
            self.report.new_cost += cost
        return content

    def prompt_reservation(self, item: PromptItem) -> float:
        """The most labelling `item` can still add to the total: for cached calls what they
        cost (once), for the others the worst case (`reservation`); judge calls on answers
        not yet known are sized for answers `max_tokens` long."""
        job = self.job
        total = 0.0
        answers: dict[str, str | None] = {}
        for model in job.candidates:
            body = answer_body(item)
            total += self._reserve_call(model, body)
            hit = self.cache.get(request_key(model, body))
            answers[model] = hit.content if hit is not None else None
        if job.mode == "golden":
            return total
        assert job.judge is not None and job.judge_prompt is not None
        filler = "x" * ANSWER_MAX_TOKENS  # a token is at least a character: a safe stand-in
        for messages in self.judge_messages(item, {m: a if a is not None else filler
                                                   for m, a in answers.items()}):
            body = judge_body(messages)
            if all(a is not None for a in answers.values()):
                total += self._reserve_call(job.judge, body)
            else:
                total += self.reservation(job.judge, body)
        return total

    def fully_cached(self, item: PromptItem) -> bool:
        """Whether every call `item` needs is in the cache."""
        answers = {}
        for model in self.job.candidates:
            hit = self.cache.get(request_key(model, answer_body(item)))
            if hit is None:
                return False
            answers[model] = hit.content
        if self.job.mode == "golden":
            return True
        assert self.job.judge is not None
        return all(self.cache.get(request_key(self.job.judge, judge_body(m))) is not None
                   for m in self.judge_messages(item, answers))

    def _reserve_call(self, model: str, body: dict[str, Any]) -> float:
        """A cached call's recorded cost until it is counted; an uncached one's worst case."""
        key = request_key(model, body)
        hit = self.cache.get(key)
        if hit is None:
            return self.reservation(model, body)
        return 0.0 if key in self._counted else hit.cost

    def judge_messages(self, item: PromptItem, answers: dict[str, str]) -> list[list[dict]]:
        """The judge conversations for one prompt, in the order their verdicts are used."""
        job = self.job
        assert job.judge_prompt is not None
        if job.mode == "single":
            return [job.judge_prompt.messages(question=item.text, answer=answers[m])
                    for m in job.candidates]
        conversations = []
        for a, b in itertools.combinations(job.candidates, 2):
            for first, second in ((a, b), (b, a)):
                conversations.append(job.judge_prompt.messages(
                    question=item.text, answer_a=answers[first], answer_b=answers[second]))
        return conversations

    async def admit(self, item: PromptItem) -> float:
        """Reserve the prompt's worst-case cost before starting it, waiting while prompts in
        flight hold the rest of the budget, so that a started prompt can always finish;
        CostCapReached when even the spent total leaves no room."""
        cap = self.job.max_cost
        if cap is None:
            return 0.0
        reserve = self.prompt_reservation(item)
        async with self._budget:
            while True:
                if self.report.stopped_by_cost or self.report.cost + reserve > cap:
                    self.report.stopped_by_cost = True
                    self._budget.notify_all()
                    raise CostCapReached
                if self.report.cost + self._reserved + reserve <= cap:
                    break
                await self._budget.wait()
            self._reserved += reserve
        return reserve

    async def release(self, reserve: float) -> None:
        async with self._budget:
            self._reserved -= reserve
            self._budget.notify_all()

    # ---- one prompt --------------------------------------------------------------------
    async def label(self, item: PromptItem) -> list[dict[str, Any]]:
        job = self.job
        texts = await _all([self.call(m, answer_body(item)) for m in job.candidates])
        answers = dict(zip(job.candidates, texts, strict=True))
        if job.mode == "golden":
            assert job.check is not None
            reference = reference_of(item, job.reference_field)
            results = {m: check_answer(job.check, a, reference, job.pattern)
                       for m, a in answers.items()}
            return [{"prompt": item.text, "results": results, "mode": "golden",
                     "check": job.check}]
        assert job.judge is not None and job.judge_prompt is not None
        calls = [self.call(job.judge, judge_body(m)) for m in self.judge_messages(item, answers)]
        raw = await _all(calls)
        if job.mode == "single":
            verdicts = dict(zip(job.candidates, raw, strict=True))
            return [{"prompt": item.text,
                     "scores": {m: parse_rating(v) for m, v in verdicts.items()},
                     "judge": job.judge, "mode": "single", "verdicts": verdicts}]
        rows = []
        for i, (a, b) in enumerate(itertools.combinations(job.candidates, 2)):
            ab, ba = raw[2 * i], raw[2 * i + 1]
            rows.append({"prompt": item.text, "model_a": a, "model_b": b,
                         "winner": pairwise_winner(parse_pairwise(ab), parse_pairwise(ba)),
                         "judge": job.judge, "mode": "pairwise", "verdicts": [ab, ba]})
        return rows

    # ---- the run -----------------------------------------------------------------------
    async def run(self) -> LabelReport:
        from tqdm import tqdm

        job = self.job
        self.cache = CallCache(job.cache_dir)
        self.semaphore = asyncio.Semaphore(job.concurrency)
        self._budget = asyncio.Condition()
        self.upstreams = Upstreams(
            job.models, timeout=job.timeout, connect_timeout=job.connect_timeout,
            retries=job.retries, backoff=job.backoff, max_retry_after=MAX_RETRY_AFTER_S,
        )
        try:
            job.output.parent.mkdir(parents=True, exist_ok=True)
            out = os.open(job.output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o644)
        except OSError as exc:
            raise SwitchLLMError(f"cannot write {job.output}: {exc.strerror}") from exc
        bar = tqdm(total=len(job.items), unit="prompt", desc="label", disable=not self.progress)
        results: dict[int, list[dict[str, Any]] | None] = {}
        next_row = 0
        order = list(range(len(job.items)))
        if job.max_cost is not None:
            # replay fully cached prompts first: under a cap they must not be crowded out by
            # new ones (output rows stay in input order)
            order.sort(key=lambda i: not self.fully_cached(job.items[i]))
        queue = iter(order)

        def flush() -> None:
            nonlocal next_row
            lines = []
            while next_row in results:
                for row in results.pop(next_row) or ():
                    lines.append(json.dumps(row, ensure_ascii=False) + "\n")
                next_row += 1
            if lines:
                os.write(out, "".join(lines).encode())  # one write: whole lines or nothing
                self.report.rows += len(lines)

        async def worker() -> None:
            for index in queue:
                rows: list[dict[str, Any]] | None = None
                try:
                    reserve = await self.admit(job.items[index])
                    try:
                        rows = await self.label(job.items[index])
                    finally:
                        await self.release(reserve)
                    self.report.done += 1
                except CostCapReached:
                    pass
                except UpstreamError as exc:
                    self.report.failed += 1
                    self.report.errors.append(self.upstreams.redact(exc.message))
                results[index] = rows
                flush()
                bar.update(1)
                bar.set_postfix_str(f"cost ${self.report.cost:.4f}", refresh=False)

        try:
            await asyncio.gather(*(worker() for _ in range(min(job.concurrency,
                                                               len(job.items)) or 1)))
        finally:
            bar.close()
            os.close(out)
            self.cache.close()
            await self.upstreams.aclose()
        return self.report

    # ---- dry run -----------------------------------------------------------------------
    def dry_run(self) -> dict[str, Any]:
        """Calls and dollars the job would need, per model, under the stated assumptions;
        calls already in the cache are counted apart (they cost nothing again)."""
        job = self.job
        cache = CallCache(job.cache_dir)
        per_model: dict[str, dict[str, float]] = {}

        def add(model: str, body: dict[str, Any], out_tokens: int) -> None:
            entry = per_model.setdefault(model, {"calls": 0, "cached": 0, "input_tokens": 0,
                                                 "output_tokens": 0, "cost": 0.0})
            hit = cache.get(request_key(model, body))
            if hit is not None:
                entry["cached"] += 1
                return
            entry["calls"] += 1
            entry["input_tokens"] += body_tokens(body)
            entry["output_tokens"] += out_tokens
            entry["cost"] += self.estimate(model, body, out_tokens)

        assumed = "x" * (ASSUMED_ANSWER_TOKENS * CHARS_PER_TOKEN)
        try:
            for item in job.items:
                answers = {}
                for model in job.candidates:
                    body = answer_body(item)
                    add(model, body, ASSUMED_ANSWER_TOKENS)
                    hit = cache.get(request_key(model, body))
                    answers[model] = hit.content if hit is not None else assumed
                if job.mode == "golden":
                    continue
                assert job.judge is not None and job.judge_prompt is not None
                if job.mode == "single":
                    for answer in answers.values():
                        messages = job.judge_prompt.messages(question=item.text, answer=answer)
                        add(job.judge, judge_body(messages), ASSUMED_VERDICT_TOKENS)
                    continue
                for a, b in itertools.combinations(job.candidates, 2):
                    for first, second in ((a, b), (b, a)):
                        messages = job.judge_prompt.messages(
                            question=item.text, answer_a=answers[first],
                            answer_b=answers[second])
                        add(job.judge, judge_body(messages), ASSUMED_VERDICT_TOKENS)
        finally:
            cache.close()
        total = sum(e["cost"] for e in per_model.values())
        n = max(1, len(job.items))
        return {"prompts": len(job.items), "models": per_model, "cost": total,
                "cost_per_1000_prompts": total / n * 1000,
                "calls": sum(int(e["calls"]) for e in per_model.values()),
                "cached": sum(int(e["cached"]) for e in per_model.values())}


def calls_per_prompt(mode: str, candidates: int) -> int:
    """Upstream calls one prompt needs: an answer per candidate, plus judge calls (pairwise:
    two orders per pair; single: one per answer; golden: none)."""
    pairs = candidates * (candidates - 1) // 2
    return candidates + {"pairwise": 2 * pairs, "single": candidates}.get(mode, 0)


async def _all(calls: Sequence[Any]) -> list[str]:
    """Await every call; if one fails, the others still finish (their answers are cached)
    and the first failure is raised."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return list(results)


def _content(model: str, payload: dict[str, Any]) -> str:
    try:
        content = payload["choices"][0]["message"].get("content")
    except (KeyError, IndexError, TypeError, AttributeError):
        raise UpstreamError(502, f"upstream model {model!r} sent no answer (no choices)") from None
    return content if isinstance(content, str) else ""


def _count(value: Any, fallback: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return fallback
