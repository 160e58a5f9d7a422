"""An upstream whose response head is malformed (a header over the 1 MiB read limit, a
Content-Length that is not a number or is negative) is a failed upstream call that falls back,
never a 500 (found by bench/probe.py, issue 7 defect 8)."""

from __future__ import annotations

import asyncio

import pytest

from switchllm.serving.http_pool import HTTPPool, ProtocolError, Target

HEADS = {
    "huge_header": b"HTTP/1.1 200 OK\r\nx-big: " + b"a" * 1_100_000 + b"\r\n\r\n",
    "length_not_a_number": b"HTTP/1.1 200 OK\r\ncontent-length: lots\r\n\r\n{}",
    "negative_length": b"HTTP/1.1 200 OK\r\ncontent-length: -5\r\n\r\n{}",
}


@pytest.mark.parametrize("kind", sorted(HEADS))
def test_malformed_head_is_a_protocol_error(kind: str) -> None:
    async def main() -> None:
        async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(HEADS[kind])
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(answer, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        pool = HTTPPool(read_timeout=5)
        try:
            with pytest.raises(ProtocolError):
                await pool.request("POST", Target.parse(f"http://127.0.0.1:{port}/v1"), {}, b"{}")
        finally:
            await pool.aclose()
            server.close()

    asyncio.run(main())


def test_server_falls_back_from_a_huge_upstream_header() -> None:
    import httpx

    from switchllm.serving import build_config, create_app
    from tests.serving_fixtures import FakeUpstream, ServerThread

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(HEADS["huge_header"])
        await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(answer, "127.0.0.1", 0))
    import threading

    threading.Thread(target=loop.run_forever, daemon=True).start()
    bad_port = server.sockets[0].getsockname()[1]
    upstream = FakeUpstream().start()
    config = build_config(routers={"random": "random"}, strong_model="strong", weak_model="weak",
                          base_url=upstream.base_url, overrides={"log_path": None, "retries": 0})
    config.models["strong"].base_url = f"http://127.0.0.1:{bad_port}/v1"
    thread = ServerThread(create_app(config)).start()
    try:
        response = httpx.post(thread.url + "/v1/chat/completions", timeout=10, json={
            "model": "strong", "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
        assert response.headers["x-switchllm-model"] == "weak"
        assert response.headers["x-switchllm-fallback"] == "true"
    finally:
        thread.stop()
        upstream.stop()
        loop.call_soon_threadsafe(loop.stop)


def big_answer(kind: str) -> bytes:
    """A 200 KB answer: a chat completion with Content-Length, the same chunked, or one stream
    event that never ends."""
    import json

    text = "x" * 200_000
    body = json.dumps({"id": "c", "object": "chat.completion", "model": "strong", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": text},
         "finish_reason": "stop"}]}).encode()
    if kind == "length":
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    if kind == "chunked":
        return (b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: "
                b"chunked\r\n\r\n" + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
    event = b"data: " + body  # no blank line: the event never ends
    return (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: "
            b"chunked\r\n\r\n" + f"{len(event):x}\r\n".encode() + event + b"\r\n0\r\n\r\n")


@pytest.mark.parametrize("kind", ["length", "chunked", "stream"])
def test_answer_over_max_response_bytes_falls_back(kind: str) -> None:
    import threading

    import httpx

    from switchllm.serving import build_config, create_app
    from tests.serving_fixtures import FakeUpstream, ServerThread

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(big_answer(kind))
        await writer.drain()
        writer.close()

    loop = asyncio.new_event_loop()
    server = loop.run_until_complete(asyncio.start_server(answer, "127.0.0.1", 0))
    threading.Thread(target=loop.run_forever, daemon=True).start()
    upstream = FakeUpstream().start()
    config = build_config(routers={"random": "random"}, strong_model="strong", weak_model="weak",
                          base_url=upstream.base_url, overrides={
                              "log_path": None, "retries": 0, "max_response_bytes": 100_000})
    config.models["strong"].base_url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/v1"
    thread = ServerThread(create_app(config)).start()
    try:
        response = httpx.post(thread.url + "/v1/chat/completions", timeout=10, json={
            "model": "strong", "stream": kind == "stream",
            "messages": [{"role": "user", "content": "hi"}]})
        assert response.status_code == 200
        assert response.headers["x-switchllm-model"] == "weak"
        if kind == "stream":
            assert response.text.endswith("data: [DONE]\n\n") and "x" * 1000 not in response.text
        else:
            assert response.json()["choices"][0]["message"]["content"] == "Hello from the upstream"
    finally:
        thread.stop()
        upstream.stop()
        loop.call_soon_threadsafe(loop.stop)
