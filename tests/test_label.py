"""`switchllm label` against real loopback upstreams: two candidates (the weak one gets
arithmetic wrong) and a rule-following judge that sometimes answers malformed verdicts, 429s
with Retry-After and 500s."""

from __future__ import annotations

import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
from serving_fixtures import FakeUpstream

from switchllm.cli import main
from switchllm.data.formats import load_training_data
from switchllm.errors import DataError
from switchllm.labelling.golden import check_answer, extract_choice, extract_number
from switchllm.labelling.judge import judge_prompt, pairwise_winner, parse_pairwise, parse_rating
from switchllm.labelling.prompts import read_prompts, select
from switchllm.labelling.runner import calls_per_prompt, request_key

ROOT = Path(__file__).resolve().parent.parent
SECRET = "sk-label-test-secret-0123456789"
TOPICS = ["the sea", "autumn", "jazz", "your weekend", "coffee", "old movies", "gardening",
          "the moon", "rainy days", "board games", "cats", "hiking"]
_SUM = re.compile(r"What is (\d+) \+ (\d+)\?")


def arithmetic(i: int) -> str:
    return f"What is {100 + 7 * i} + {3 * i + 1}?"


def chat(i: int) -> str:
    return f"Tell me something nice about {TOPICS[i % len(TOPICS)]} (note {i})."


def candidate(offset: int):  # noqa: ANN201
    def respond(body: dict[str, Any]) -> str:
        text = body["messages"][-1]["content"]
        found = _SUM.search(text)
        if found:
            return f"The answer is {int(found[1]) + int(found[2]) + offset}."
        return "What a lovely topic; there is much to enjoy about it."
    return respond


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


class Judge:
    """Prefers the right sum, ties chit-chat. Position-biased (always [[A]]) when the second
    addend is divisible by 5 and malformed when the first is divisible by 11. Each distinct
    request is refused once with 429 + Retry-After when its hash is divisible by 6."""

    def __init__(self) -> None:
        self.refused: dict[str, float] = {}
        self.refuse = True
        self.retried_after: list[float] = []

    def __call__(self, body: dict[str, Any]) -> str | int:
        key = json.dumps(body["messages"], sort_keys=True)
        now = time.monotonic()
        if key in self.refused:
            self.retried_after.append(now - self.refused.pop(key))
        elif self.refuse and zlib.crc32(key.encode()) % 6 == 0:
            self.refused[key] = now
            return 429
        text = body["messages"][-1]["content"]
        found = _SUM.search(text)
        if "[The Start of Assistant's Answer]" in text:  # single grading
            answer = _between(text, "[The Start of Assistant's Answer]\n", "\n[The End")
            if not found:
                return "Pleasant. Rating: [[5]]"
            right = str(int(found[1]) + int(found[2]))
            return "Correct. Rating: [[9]]" if right in answer else "Wrong.  rating: [[ 2 ]]"
        if not found:
            return "Both are equally fine. [[C]]"
        a, b = int(found[1]), int(found[2])
        if a % 11 == 0:
            return "I cannot decide [[D]]"
        if b % 5 == 0:
            return "Assistant A, clearly. [[A]]"
        answer_a = _between(text, "[The Start of Assistant A's Answer]\n", "\n[The End")
        return "My verdict: [[a]]" if str(a + b) in answer_a else "Final verdict: [[B]]"


@pytest.fixture
def upstream() -> FakeUpstream:
    fake = FakeUpstream().start()
    fake.behaviour("strong").respond = candidate(0)
    fake.behaviour("weak").respond = candidate(1)
    judge = Judge()
    fake.behaviour("judge").respond = judge
    fake.behaviour("judge").retry_after = "0.3"
    fake.behaviour("judge").fail_rate = 0.05  # HTTP 500s, retried
    fake.judge = judge  # type: ignore[attr-defined]
    yield fake
    fake.stop()


def write_config(tmp_path: Path, upstream: FakeUpstream, input_price: float = 1.0,
                 output_price: float = 2.0, judge_input_price: float | None = None) -> Path:
    models = {
        name: {"base_url": upstream.base_url, "api_key_env": "LABEL_TEST_KEY",
               "input_price": input_price, "output_price": output_price}
        for name in ("strong", "weak", "judge")
    }
    if judge_input_price is not None:
        models["judge"]["input_price"] = judge_input_price
    path = tmp_path / "serving.yaml"
    path.write_text(json.dumps({"models": models}))  # JSON is YAML
    return path


def write_prompts(tmp_path: Path, n: int, name: str = "prompts.jsonl") -> Path:
    rows = []
    for i in range(n):
        text = arithmetic(i) if i % 2 == 0 else chat(i)
        rows.append({"question": text, "id": i})
    path = tmp_path / name
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def label(config: Path, prompts: Path, out: Path, *extra: str) -> int:
    return main(["label", str(prompts), "--config", str(config), "--models", "strong,weak",
                 "--output", str(out), "--quiet", *extra])


def rows_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LABEL_TEST_KEY", SECRET)


# ---- judge modes, end to end -------------------------------------------------------------
def test_pairwise_rows_both_orders_ties_and_training_format(
    tmp_path: Path, upstream: FakeUpstream, capsys: pytest.CaptureFixture[str]
) -> None:
    config, prompts, out = write_config(tmp_path, upstream), write_prompts(tmp_path, 40), \
        tmp_path / "battles.jsonl"
    assert label(config, prompts, out, "--judge", "judge") == 0
    rows = rows_of(out)
    assert len(rows) == 40 and [r["prompt"] for r in rows] == [
        arithmetic(i) if i % 2 == 0 else chat(i) for i in range(40)]
    for row in rows:
        assert (row["model_a"], row["model_b"], row["judge"], row["mode"]) == (
            "strong", "weak", "judge", "pairwise")
        assert len(row["verdicts"]) == 2
        found = _SUM.search(row["prompt"])
        if not found:
            assert row["winner"] == "tie"
        elif int(found[1]) % 11 == 0:  # malformed verdicts
            assert row["winner"] == "tie" and "[[D]]" in row["verdicts"][0]
        elif int(found[2]) % 5 == 0:  # position bias: inconsistent across the orders
            assert row["winner"] == "tie" and row["verdicts"] == [
                "Assistant A, clearly. [[A]]"] * 2
        else:
            assert row["winner"] == "model_a", row
    assert sum(r["winner"] == "model_a" for r in rows) >= 10
    # both orders were judged: strong's answer was shown first once and second once
    judge_calls = [s for s in upstream.seen if s.model == "judge"]
    first = arithmetic(2)
    texts = {s.body["messages"][-1]["content"] for s in judge_calls if first in
             s.body["messages"][-1]["content"]}
    assert len(texts) == 2
    orders = sorted(t.index("The answer is 121") < t.index("The answer is 122") for t in texts)
    assert orders == [False, True]
    # 429s were retried after Retry-After, not before
    assert upstream.judge.retried_after and min(upstream.judge.retried_after) >= 0.28
    # the existing training formats read the rows unchanged (extra keys tolerated)
    loaded = load_training_data([out], on_bad_row="error")
    assert loaded.files[0]["format"] == "battles" and loaded.files[0]["battles"] == 40
    # no key anywhere: output, cache, printed text; the upstream did receive it
    assert all(s.headers.get("authorization") == f"Bearer {SECRET}" for s in upstream.seen)
    printed = capsys.readouterr()
    for blob in (out.read_bytes(), *(p.read_bytes() for p in
                                     (tmp_path / ".switchllm-label-cache").iterdir()),
                 (printed.out + printed.err).encode()):
        assert SECRET.encode() not in blob
    assert "labelled 40 of 40 prompts" in printed.out


def test_single_mode_scores(tmp_path: Path, upstream: FakeUpstream) -> None:
    config, prompts, out = write_config(tmp_path, upstream), write_prompts(tmp_path, 12), \
        tmp_path / "scores.jsonl"
    assert label(config, prompts, out, "--judge", "judge", "--mode", "single") == 0
    rows = rows_of(out)
    assert len(rows) == 12
    for i, row in enumerate(rows):
        assert row["mode"] == "single" and row["judge"] == "judge"
        assert set(row["verdicts"]) == {"strong", "weak"}
        assert row["scores"] == ({"strong": 9, "weak": 2} if i % 2 == 0 else
                                 {"strong": 5, "weak": 5})
    assert load_training_data([out], on_bad_row="error").files[0]["format"] == "scores"


def test_golden_mode_checks_numbers_and_calls_no_judge(tmp_path: Path,
                                                       upstream: FakeUpstream) -> None:
    config = write_config(tmp_path, upstream)
    prompts = tmp_path / "gsm.jsonl"
    prompts.write_text("".join(json.dumps({"question": arithmetic(i), "answer":
                                           f"Adding gives ...\n#### {101 + 10 * i:,}"}) + "\n"
                               for i in range(200, 210)))
    out = tmp_path / "labels.jsonl"
    assert label(config, prompts, out, "--reference-field", "answer", "--check", "number") == 0
    rows = rows_of(out)
    assert len(rows) == 10
    assert all(r["results"] == {"strong": True, "weak": False} and r["mode"] == "golden"
               and r["check"] == "number" for r in rows)
    assert not [s for s in upstream.seen if s.model == "judge"]
    assert load_training_data([out], on_bad_row="error").files[0]["format"] == "labels"
    assert label(config, prompts, out, "--reference-field", "solution", "--check",
                 "number") == 2


# ---- never loses work, never overspends -------------------------------------------------
def test_resume_after_kill_makes_no_repeated_calls(tmp_path: Path,
                                                   upstream: FakeUpstream) -> None:
    config, prompts, out = write_config(tmp_path, upstream), write_prompts(tmp_path, 60), \
        tmp_path / "battles.jsonl"
    for model in ("strong", "weak"):
        upstream.behaviour(model).delay_s = 0.03
    upstream.behaviour("judge").fail_rate = 0.0
    upstream.judge.refuse = False  # every request answered: repeats would be re-asks
    command = [sys.executable, "-m", "switchllm", "label", str(prompts), "--config",
               str(config), "--models", "strong,weak", "--judge", "judge", "--output",
               str(out), "--quiet", "--concurrency", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while len(upstream.seen) < 100 and time.time() < deadline and process.poll() is None:
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait(10)
    assert process.returncode == -signal.SIGKILL, "the run finished before it was killed"
    partial = rows_of(out)  # whole lines only
    assert 0 < len(partial) < 60
    db = sqlite3.connect(tmp_path / ".switchllm-label-cache" / "calls.sqlite")
    cached = {row[0] for row in db.execute("SELECT key FROM calls")}
    db.close()
    first_run = len(upstream.seen)
    assert len(cached) >= 90

    def keys_seen() -> list[str]:
        keys = []
        for seen in upstream.seen:
            body = {k: v for k, v in seen.body.items() if k != "model"}
            keys.append(request_key(seen.model, body))
        return keys

    upstream.seen.clear()
    assert label(config, prompts, out, "--judge", "judge", "--concurrency", "4") == 0
    again = keys_seen()
    assert not set(again) & cached  # nothing answered before the kill was asked again
    assert len(again) == len(set(again))
    # every call was made once, bar those in flight at the kill (at most the concurrency)
    assert first_run + len(again) <= 60 * 4 + 4
    assert len(rows_of(out)) == 60 and rows_of(out)[: len(partial)] == partial
    upstream.seen.clear()
    assert label(config, prompts, out, "--judge", "judge") == 0
    assert upstream.seen == [] and len(rows_of(out)) == 60


def test_cost_cap_stops_cleanly(tmp_path: Path, upstream: FakeUpstream,
                                capsys: pytest.CaptureFixture[str]) -> None:
    # every call reports 10 prompt + 5 completion tokens: an answer costs $0.01 at $1000 per
    # 1M input tokens, a verdict $0.0001
    config = write_config(tmp_path, upstream, input_price=1000.0, output_price=0.0,
                          judge_input_price=10.0)
    prompts, out = write_prompts(tmp_path, 60), tmp_path / "battles.jsonl"
    upstream.behaviour("judge").fail_rate = 0.0
    upstream.judge.refuse = False  # every call seen is a paid call
    # a prompt costs $0.0202 but is admitted only when its worst case (a prompt token per
    # character, answers max_tokens long: about $0.17 here) still fits under the cap
    assert label(config, prompts, out, "--judge", "judge", "--max-cost", "1") == 3
    printed = capsys.readouterr()
    assert "stopped at the cost cap" in printed.err and "Traceback" not in printed.err
    spent = sum(0.0001 if s.model == "judge" else 0.01 for s in upstream.seen)
    assert 0.7 < spent <= 1.0  # within one prompt's worst case of the cap, never past it
    assert float(re.search(r"cost \$([\d.]+)", printed.out)[1]) == pytest.approx(spent)
    rows = rows_of(out)
    assert 30 < len(rows) < 50
    match = re.search(r"labelled (\d+) of 60 prompts", printed.out)
    assert match and int(match[1]) == len(rows)
    # a rerun under the same cap replays the cache, asks nothing again, and keeps the total
    # (cached calls at what they cost) under the cap
    before = {request_key(s.model, {k: v for k, v in s.body.items() if k != "model"})
              for s in upstream.seen}
    upstream.seen.clear()
    assert label(config, prompts, out, "--judge", "judge", "--max-cost", "1") == 3
    again = {request_key(s.model, {k: v for k, v in s.body.items() if k != "model"})
             for s in upstream.seen}
    assert not again & before and len(rows_of(out)) >= len(rows)
    assert float(re.search(r"cost \$([\d.]+)", capsys.readouterr().out)[1]) <= 1.0


def test_dry_run_estimates_and_calls_nothing(tmp_path: Path, upstream: FakeUpstream,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config = write_config(tmp_path, upstream, input_price=1.0, output_price=1.0)
    prompts = tmp_path / "p.txt"
    prompts.write_text("x" * 400 + "\n" + "y" * 400 + "\n")
    assert label(config, prompts, tmp_path / "o.jsonl", "--judge", "judge", "--dry-run") == 0
    printed = capsys.readouterr().out
    assert upstream.seen == []
    assert "2 prompts, 4 calls per prompt (pairwise): 8 calls to make, 0 already cached" in printed
    # answers: 4 x (100 in + 300 out); judge: 4 x (template + 100 + 2 x 300 in, 150 out)
    template = len(judge_prompt("pairwise").user) + len(judge_prompt("pairwise").system or "")
    judge_in = (template - len("{question}{answer_a}{answer_b}") + 400 + 2400) // 4
    expected = (4 * 400 + 4 * (judge_in + 150)) / 1e6
    found = float(re.search(r"estimated cost \$([\d.]+)", printed)[1])
    assert found == pytest.approx(expected, abs=1e-4)
    assert calls_per_prompt("pairwise", 3) == 3 + 2 * 3
    assert calls_per_prompt("single", 3) == 6 and calls_per_prompt("golden", 3) == 3


def test_bad_invocations_are_one_line_errors(tmp_path: Path, upstream: FakeUpstream,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    config, prompts = write_config(tmp_path, upstream), write_prompts(tmp_path, 2)
    out = tmp_path / "o.jsonl"
    bad = tmp_path / "judge.txt"
    bad.write_text("Compare {answer_a} with {answer_b}")
    cases = [
        ((), "choose one labelling mode"),
        (("--judge", "gpt-9"), r"model\(s\) gpt-9 not in .*configured: strong, weak, judge"),
        (("--judge", "judge", "--judge-prompt", str(bad)), "lacks the placeholder.*{question}"),
        (("--check", "number"), "--check number needs --reference-field"),
        (("--check", "regex", "--pattern", "(["), "not a regular expression"),
    ]
    for extra, message in cases:
        assert label(config, prompts, out, *extra) == 2
        err = capsys.readouterr().err
        assert re.search(message, err) and err.count("\n") == 1, err
    assert upstream.seen == []


def test_custom_judge_prompt(tmp_path: Path, upstream: FakeUpstream) -> None:
    config, prompts = write_config(tmp_path, upstream), write_prompts(tmp_path, 4)
    template = tmp_path / "judge.txt"
    template.write_text("Q: {question}\n[The Start of Assistant A's Answer]\n{answer_a}\n"
                        "[The End of A]\n[The Start of Assistant B's Answer]\n{answer_b}\n"
                        "[The End of B] {not a placeholder}")
    out = tmp_path / "o.jsonl"
    assert label(config, prompts, out, "--judge", "judge", "--judge-prompt", str(template)) == 0
    sent = [s.body["messages"] for s in upstream.seen if s.model == "judge"]
    assert all(len(m) == 1 and m[0]["content"].startswith("Q: ") and
               "{not a placeholder}" in m[0]["content"] for m in sent)
    assert rows_of(out)[0]["winner"] == "model_a"


# ---- a router learns the rule from the labels --------------------------------------------
def test_router_trained_on_the_labels_learns_the_rule(tmp_path: Path,
                                                      upstream: FakeUpstream) -> None:
    from switchllm.training import train_router

    upstream.behaviour("judge").fail_rate = 0.0
    upstream.behaviour("judge").retry_after = "0"
    config, prompts, out = write_config(tmp_path, upstream), write_prompts(tmp_path, 300), \
        tmp_path / "battles.jsonl"
    assert label(config, prompts, out, "--judge", "judge", "--seed", "1") == 0
    battles = load_training_data([out], on_bad_row="error").battles
    result = train_router("knn", battles, tmp_path / "card", val_fraction=0.3, seed=0,
                          params={"k": 10}, progress=False, strong_model="strong",
                          weak_model="weak")
    assert result.metrics["apgr"]["value"] > 0.7


# ---- units: prompts, verdicts, golden checks ---------------------------------------------
def test_prompt_fields_are_detected_and_a_miss_names_them(tmp_path: Path) -> None:
    path = tmp_path / "p.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"messages": [{"role": "system", "content": "be brief"},
                      {"role": "user", "content": "hi there"}]},
    ]))
    [item] = read_prompts(path)
    assert item.text == "hi there" and len(item.messages) == 2
    path.write_text(json.dumps({"turns": ["first turn", "second"]}))
    assert read_prompts(path)[0].text == "first turn"
    csv_path = tmp_path / "p.csv"
    csv_path.write_text("id,instruction\n1,Write a poem\n2,Write a poem\n3,Sum 2 and 2\n")
    items = read_prompts(csv_path)
    assert [i.text for i in select(items)] == ["Write a poem", "Sum 2 and 2"]
    assert len(select(items, dedup=False)) == 3
    assert len(select(items, dedup=False, sample=2, seed=3)) == 2
    path.write_text(json.dumps({"text": "hello", "label": 1}))
    with pytest.raises(DataError, match=r"fields label, text.*--prompt-field"):
        read_prompts(path)
    assert read_prompts(path, "text")[0].text == "hello"


def test_verdict_parsing() -> None:
    assert parse_pairwise("blah [[A]] then on reflection [[ b ]]") == "B"
    assert parse_pairwise("[[C]]") == "C" and parse_pairwise("[A] or [[D]]") is None
    assert parse_rating("Rating: [[7]]") == 7 and parse_rating("[[ 8.5 ]]") == 8.5
    assert parse_rating("Rating: 6") == 6 and parse_rating("[[11]]") is None
    assert parse_rating("no verdict") is None
    assert pairwise_winner("A", "B") == "model_a" and pairwise_winner("B", "A") == "model_b"
    assert pairwise_winner("A", "A") == "tie" and pairwise_winner("C", "C") == "tie"
    assert pairwise_winner(None, "B") == "tie"


def test_golden_checks() -> None:
    assert extract_number("so she pays $1,234.50 in total") == 1234.5
    assert extract_number("steps 3 and 4\n#### 42") == 42
    assert check_answer("number", "The answer is 18.", "Janet ... #### 18")
    assert not check_answer("number", "The answer is 19.", "#### 18")
    assert not check_answer("number", "no idea", "#### 18")
    assert extract_choice("The answer is (B).") == "B"
    assert extract_choice("Answer: d") == "D" and extract_choice("C") == "C"
    assert check_answer("choice", "I think the answer is (C)", "C")
    assert not check_answer("choice", "The answer is (A)", "(C)")
    assert check_answer("exact", "  Paris\n", "paris")
    assert not check_answer("exact", "Paris, France", "Paris")
    assert check_answer("regex", "final: 42", None, r"final:\s*42")
    assert check_answer("regex", "it is a+b", "a+b", r"is {reference}$")


def test_from_log_labels_the_logged_prompts(tmp_path: Path, upstream: FakeUpstream) -> None:
    from switchllm.serving.decision_log import DecisionLog, DecisionRecord

    log = DecisionLog(tmp_path / "d.sqlite", log_prompts=True)
    for i, prompt in enumerate([arithmetic(1), chat(2), arithmetic(1)]):
        log.record(DecisionRecord(
            ts=float(i), router="random", threshold=0.5, win_rate=0.4, model="weak",
            routed_model="weak", strong_model="strong", fallback=False, status=200,
            stream=False, latency_ms=1.0, routing_ms=0.1, prompt_tokens=3,
            completion_tokens=2, cost_usd=None, strong_cost_usd=None, prompt=prompt))
    log.close()
    config, out = write_config(tmp_path, upstream), tmp_path / "o.jsonl"
    assert main(["label", "--from-log", str(tmp_path / "d.sqlite"), "--config", str(config),
                 "--models", "strong,weak", "--judge", "judge", "--output", str(out),
                 "--quiet"]) == 0
    assert [r["prompt"] for r in rows_of(out)] == [arithmetic(1), chat(2)]  # de-duplicated
    assert main(["label", "--from-log", str(tmp_path / "none.sqlite"), "--config",
                 str(config), "--models", "strong,weak", "--judge", "judge", "--output",
                 str(out), "--quiet"]) == 2


def test_retry_after_cap_is_a_parameter() -> None:
    from switchllm.labelling.runner import MAX_RETRY_AFTER_S
    from switchllm.serving.config import ModelSpec
    from switchllm.serving.upstream import Upstreams

    models = {"m": ModelSpec(name="m", base_url="http://127.0.0.1:9/v1")}
    headers = {"retry-after": "30"}
    served = Upstreams(models)._status_error("m", 429, b"", headers)
    labelling = Upstreams(models, max_retry_after=MAX_RETRY_AFTER_S)._status_error(
        "m", 429, b"", headers)
    # serving goes to the other model rather than hold a caller 30 s; labelling waits it out
    assert served.retry_after == labelling.retry_after == 30.0
    assert not served.retry and labelling.retry


def test_three_candidates_give_every_pair(tmp_path: Path, upstream: FakeUpstream) -> None:
    upstream.behaviour("third").respond = candidate(2)
    config = write_config(tmp_path, upstream)
    raw = json.loads(config.read_text())
    raw["models"]["third"] = dict(raw["models"]["weak"])
    config.write_text(json.dumps(raw))
    prompts, out = tmp_path / "p.txt", tmp_path / "o.jsonl"
    prompts.write_text(f"{arithmetic(1)}\n{arithmetic(3)}\n")
    assert main(["label", str(prompts), "--config", str(config), "--models",
                 "strong,weak,third", "--judge", "judge", "--output", str(out),
                 "--quiet"]) == 0
    rows = rows_of(out)
    assert [(r["model_a"], r["model_b"], r["winner"]) for r in rows[:3]] == [
        ("strong", "weak", "model_a"), ("strong", "third", "model_a"),
        ("weak", "third", "tie")]  # both wrong: the judge's "[[B]]" in both orders is a tie
    judge_calls = {json.dumps(s.body["messages"]) for s in upstream.seen if s.model == "judge"}
    assert len(judge_calls) == 2 * 3 * 2
