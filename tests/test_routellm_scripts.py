"""RouteLLM's own scripts and command lines, run against loopback upstreams.

`test_openai_server.py` and `test_openai_client.py` (RouteLLM's routellm/tests/) are rewritten
here as assertions: the same calls with the same arguments and defaults, with `routellm`
changed to `switchllm` in the imports and nothing else. The "cloud" providers are loopback
servers reached through the variables litellm honours ($OPENAI_BASE_URL, $ANYSCALE_API_BASE).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

from switchllm.cli import main
from switchllm.commands import serve
from switchllm.openai_server import build_parser
from switchllm.serving import create_app
from tests.serving_fixtures import FakeUpstream, ServerThread

SYSTEM = "You are a helpful assistant. Respond to the questions as best as you can."
PROMPT = "What is heavier, a pound of feathers or a kilogram of steel?"
STRONG, WEAK = "gpt-4-1106-preview", "anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1"
CONFIG_EXAMPLE = """\
sw_ranking:
    arena_battle_datasets:
      - lmsys/lmsys-arena-human-preference-55k
      - routellm/gpt4_judge_battles
    arena_embedding_datasets:
      - routellm/arena_battles_embeddings
      - routellm/gpt4_judge_battles_embeddings
causal_llm:
    checkpoint_path: routellm/causal_llm_gpt4_augmented
bert:
    checkpoint_path: routellm/bert_gpt4_augmented
mf:
    checkpoint_path: routellm/mf_gpt4_augmented
"""
FAST_ROUTERS = ["random", "mf"]
SLOW_ROUTERS = [pytest.param(r, marks=pytest.mark.slow) for r in ("sw_ranking", "bert")]


@pytest.fixture(autouse=True)
def _in_tmp_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # RouteLLM's command lines use the default decision log in the working directory
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="module")
def openai_up() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(scope="module")
def anyscale_up() -> Iterator[FakeUpstream]:
    up = FakeUpstream().start()
    yield up
    up.stop()


@pytest.fixture(autouse=True)
def _providers(openai_up: FakeUpstream, anyscale_up: FakeUpstream, tmp_path: Path,
               monkeypatch: pytest.MonkeyPatch) -> None:
    openai_up.reset()
    anyscale_up.reset()
    monkeypatch.setenv("OPENAI_API_KEY", "sk-openai-test")
    monkeypatch.setenv("ANYSCALE_API_KEY", "esecret_anyscale-test")
    monkeypatch.setenv("OPENAI_BASE_URL", openai_up.base_url)
    monkeypatch.setenv("ANYSCALE_API_BASE", anyscale_up.base_url)
    monkeypatch.chdir(tmp_path)  # the server's default decision log lands here


def _check_answer(chat_completion, openai_up: FakeUpstream, anyscale_up: FakeUpstream) -> None:
    response = chat_completion.choices[0].message.content
    assert chat_completion.model in (STRONG, WEAK)
    assert response == "Hello from the upstream"
    if chat_completion.model == STRONG:
        (seen,) = openai_up.seen
        assert seen.model == "gpt-4-1106-preview"
        assert seen.headers["authorization"] == "Bearer sk-openai-test"
    else:
        (seen,) = anyscale_up.seen
        assert seen.model == "mistralai/Mixtral-8x7B-Instruct-v0.1"  # prefix stripped
        assert seen.headers["authorization"] == "Bearer esecret_anyscale-test"
    assert seen.body["temperature"] == 0.7
    assert seen.body["messages"][0] == {"role": "system", "content": SYSTEM}


@pytest.mark.parametrize("router", FAST_ROUTERS + SLOW_ROUTERS)
def test_routellm_test_openai_server(router: str, openai_up: FakeUpstream,
                                     anyscale_up: FakeUpstream) -> None:
    # python -m switchllm.openai_server --routers ROUTER (RouteLLM's defaults for the rest)
    args = build_parser().parse_args(["--routers", router, "--port", "0"])
    server = ServerThread(create_app(serve.config_from_args(args))).start()
    try:
        # test_openai_server.py, defaults: --threshold 0.7, --api-key NO_API_KEY_REQUIRED
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="NO_API_KEY_REQUIRED",
                               timeout=60.0, max_retries=3)
        chat_completion = client.chat.completions.create(
            model=f"router-{router}-{0.7}",
            messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
            temperature=0.7,
        )
        _check_answer(chat_completion, openai_up, anyscale_up)
    finally:
        server.stop()


@pytest.mark.parametrize("router", FAST_ROUTERS + SLOW_ROUTERS)
def test_routellm_test_openai_client(router: str, openai_up: FakeUpstream,
                                     anyscale_up: FakeUpstream) -> None:
    from switchllm.controller import Controller
    from switchllm.routers.routers import ROUTER_CLS

    assert router in ROUTER_CLS.keys()  # the script's argparse choices
    client = Controller(routers=[router], strong_model="gpt-4-1106-preview",
                        weak_model="anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1")
    chat_completion = client.chat.completions.create(
        router=router, threshold=0.7,
        messages=[{"role": "system", "content": SYSTEM}, {"role": "user", "content": PROMPT}],
        temperature=0.7,
    )
    _check_answer(chat_completion, openai_up, anyscale_up)


def test_routellm_server_command_line_parses_verbatim(tmp_path: Path) -> None:
    Path("config.example.yaml").write_text(CONFIG_EXAMPLE)
    args = build_parser().parse_args(
        ["--routers", "mf", "--config", "config.example.yaml", "--workers", "2", "--verbose",
         "--port", "6061"])
    config = serve.config_from_args(args)
    assert (config.strong_model, config.weak_model, config.port) == (STRONG, WEAK, 6061)
    assert list(config.routers) == ["mf"] and args.workers == 2 and args.verbose
    default = build_parser().parse_args([])
    assert default.routers is None and default.workers == 0  # main() then serves random


def test_routellm_calibrate_command_line(capsys: pytest.CaptureFixture) -> None:
    Path("config.example.yaml").write_text(CONFIG_EXAMPLE)
    assert main(["calibrate", "--task", "calibrate", "--routers", "mf", "--strong-model-pct",
                 "0.5", "--config", "config.example.yaml"]) == 0
    out = capsys.readouterr().out
    assert "For 50.0% strong model calls for mf, threshold = " in out
    assert main(["calibrate", "--task", "generate", "--routers", "mf",
                 "--strong-model-pct", "0.5"]) == 2
    assert "--task generate" in capsys.readouterr().err


def test_calibrate_reads_mt_bench_question_jsonl(capsys: pytest.CaptureFixture) -> None:
    rows = [{"question_id": 81, "category": "writing", "turns": ["Write a travel blog post.",
                                                                "Rewrite it."]},
            {"question_id": 82, "category": "math", "turns": ["What is 3+4?", "And 5+6?"]}]
    Path("question.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["calibrate", "--routers", "random", "--strong-model-pct", "0.5",
                 "--prompts", "question.jsonl"]) == 0
    assert "from 2 prompts from question.jsonl" in capsys.readouterr().out


def test_routellm_eval_flags(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    Path("config.example.yaml").write_text(CONFIG_EXAMPLE)
    assert main(["eval", "--routers", "random", "--benchmark", "gsm8k", "--config",
                 "config.example.yaml", "--overwrite-cache", "random", "--num-results", "10",
                 "--random-iters", "3", "--parallel", "1", "--output", str(tmp_path / "out")]) == 0
    results = json.loads((tmp_path / "out" / "gsm8k.json").read_text())
    assert results["references"]["random"]["seeds"] == 3
    assert "random x3 seeds" in capsys.readouterr().out


def test_routellm_readme_quickstart(openai_up: FakeUpstream, anyscale_up: FakeUpstream,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """RouteLLM's README quickstart, import changed; RouteLLM's 50%-strong mf threshold is
    served as router-mf-s0.5."""
    import os

    from switchllm.controller import Controller

    monkeypatch.setenv("OPENAI_API_KEY", "sk-XXXXXX")
    os.environ["ANYSCALE_API_KEY"] = "esecret_XXXXXX"  # as the quickstart sets it

    client = Controller(
        routers=["mf"],
        strong_model="gpt-4-1106-preview",
        weak_model="anyscale/mistralai/Mixtral-8x7B-Instruct-v0.1",
    )
    response = client.chat.completions.create(
        # This tells RouteLLM to use the MF router with a cost threshold of 0.11593
        model="router-mf-0.11593",
        messages=[{"role": "user", "content": "Hello!"}],
    )
    assert response.choices[0]["message"]["content"] == "Hello from the upstream"
    assert response.model in (STRONG, WEAK)
    assert len(openai_up.seen) + len(anyscale_up.seen) == 1


def test_routellm_local_models_doc(openai_up: FakeUpstream, anyscale_up: FakeUpstream,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """docs/routing_to_local_models.md: GPT-4 strong, Ollama's llama3 weak."""
    monkeypatch.setenv("OLLAMA_API_BASE", anyscale_up.base_url.removesuffix("/v1"))
    args = build_parser().parse_args(["--routers", "mf", "--strong-model", "gpt-4-1106-preview",
                                      "--weak-model", "ollama_chat/llama3"])
    server = ServerThread(create_app(serve.config_from_args(args))).start()
    try:
        client = openai.OpenAI(base_url=server.url + "/v1", api_key="no_api_key")
        for threshold in ("0", "1"):
            client.chat.completions.create(model=f"router-mf-{threshold}",
                                           messages=[{"role": "user", "content": "Hello!"}])
        assert [s.model for s in openai_up.seen] == ["gpt-4-1106-preview"]
        (local,) = anyscale_up.seen
        assert local.model == "llama3" and "authorization" not in local.headers
    finally:
        server.stop()


def test_calibrate_on_one_calibration_set(capsys: pytest.CaptureFixture) -> None:
    from switchllm.routers import load_router

    assert main(["calibrate", "--router", "mf", "--strong-pct", "0.5",
                 "--calibration-set", "arena-hard"]) == 0
    out = capsys.readouterr().out
    expected = load_router("mf").threshold_for_strong_share(0.5, "arena-hard")
    assert f"threshold = {expected:.5f}  (from the router card's arena-hard" in out
    assert main(["calibrate", "--router", "mf", "--strong-pct", "0.5",
                 "--calibration-set", "nope"]) == 2
    assert "no calibration set 'nope'; it has: llmrouter, arena-hard, validation" in \
        capsys.readouterr().err
