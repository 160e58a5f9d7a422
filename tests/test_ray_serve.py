"""Ray Serve (switchllm.serving.ray_app): the settings it reads from the YAML, and (slow: a
local Ray instance takes ~30 s to start here) the deployment driven with the openai client."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from switchllm.serving.config import ConfigError
from switchllm.serving.ray_app import ray_settings
from tests.serving_fixtures import FakeUpstream, free_port


def test_ray_settings_come_from_the_yaml_and_bad_ones_are_named() -> None:
    settings = ray_settings({"ray": {
        "router": {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
                   "max_batch_size": 32, "batch_wait_timeout_s": 0.01,
                   "ray_actor_options": {"num_cpus": 1}},
        "ingress": {"num_replicas": 2},
    }})
    assert settings.router == {"autoscaling_config": {"min_replicas": 1, "max_replicas": 4},
                               "ray_actor_options": {"num_cpus": 1},
                               "max_ongoing_requests": 4 * 32}  # room to fill a batch
    assert settings.ingress == {"num_replicas": 2, "max_ongoing_requests": 1000}
    assert (settings.max_batch_size, settings.batch_wait_timeout_s) == (32, 0.01)
    assert ray_settings({}).ingress == {"max_ongoing_requests": 1000}
    for bad, message in (
        ({"ray": {"routr": {}}}, "unknown setting 'routr'"),
        ({"ray": {"ingress": {"max_batch_size": 8}}}, "ray.ingress: unknown setting"),
        ({"ray": {"router": {"max_batch_size": 0}}}, "must be positive"),
        ({"ray": {"router": {"max_batch_size": "many"}}}, "must be a number"),
        ({"ray": {"router": {"num_replicas": 2, "autoscaling_config": {}}}}, "not both"),
        ({"ray": ["router"]}, "ray must be a mapping"),
    ):
        with pytest.raises(ConfigError, match=message):
            ray_settings(bad)


def test_serve_ray_and_workers_do_not_combine() -> None:
    from switchllm.cli import main

    assert main(["serve", "--ray", "--workers", "2", "--routers", "random", "--no-log"]) == 2


@pytest.mark.slow
def test_ray_deployment_batches_prompts_and_speaks_the_openai_api(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    serve = pytest.importorskip("ray.serve")
    import openai

    from switchllm.serving import ray_app

    upstream = FakeUpstream().start()
    config = tmp_path / "serve.yaml"
    config.write_text(
        "strong_model: strong\nweak_model: weak\n"
        "models:\n"
        f"  strong: {{base_url: '{upstream.base_url}', input_price: 10, output_price: 30}}\n"
        f"  weak: {{base_url: '{upstream.base_url}', input_price: 0.5, output_price: 1.5}}\n"
        "routers: [random]\n"
        "ray:\n"
        "  router: {num_replicas: 1, max_batch_size: 32, batch_wait_timeout_s: 0.05}\n"
        "  ingress: {num_replicas: 1}\n")
    log_path = tmp_path / "log.sqlite"
    port = free_port()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        serve.run(ray_app.build({"config": str(config), "log": str(log_path),
                                 "log_flush_ms": "60000"}),
                  name=ray_app.APP_NAME, route_prefix="/")
        client = openai.AsyncOpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none")

        async def traffic() -> tuple[list, list]:
            answers = await asyncio.gather(*(
                client.chat.completions.with_raw_response.create(
                    model="router-random-0.5",
                    messages=[{"role": "user", "content": f"question {i}"}])
                for i in range(24)))
            stream = await client.chat.completions.create(
                model="router-random-1.0", stream=True,
                messages=[{"role": "user", "content": "stream this"}])
            chunks = [chunk async for chunk in stream]
            return answers, chunks

        answers, chunks = asyncio.run(traffic())
        models = {raw.parse().model for raw in answers}
        assert models <= {"strong", "weak"} and len(answers) == 24
        for raw in answers:
            rate = float(raw.headers["x-switchllm-win-rate"])
            assert raw.headers["x-switchllm-model"] == ("strong" if rate >= 0.5 else "weak")
        # threshold 1.0: the weak model, streamed through the Ray proxy chunk by chunk
        assert {c.model for c in chunks} == {"weak"}
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == "Hello from the upstream"
        routers = serve.get_deployment_handle("RouterReplicas", app_name=ray_app.APP_NAME)
        stats = routers.stats.remote().result()
        assert stats["largest_batch"] > 1  # concurrent prompts shared a router call
        assert stats["batches"] < 25 + 1  # (+1: the warm-up)

        serve.delete(ray_app.APP_NAME)  # the ingress stops and flushes its decision log
        rows = sqlite3.connect(log_path).execute(
            "SELECT model, status FROM decisions").fetchall()
        assert len(rows) == 25 and {status for _, status in rows} == {200}
    finally:
        serve.shutdown()
        ray.shutdown()
        upstream.stop()
