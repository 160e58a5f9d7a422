"""The upstream HTTP client over TLS, against a loopback HTTPS upstream with its own CA."""

from __future__ import annotations

import asyncio
import json
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest

from switchllm.serving.http_pool import ConnectError, HTTPPool, Target
from tests.serving_fixtures import FakeUpstream


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    return cert, key


def test_https_requests_and_streams(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_context.load_cert_chain(cert, key)
    client_context = ssl.create_default_context(cafile=str(cert))

    async def main() -> None:
        upstream = FakeUpstream()
        await upstream.serve(ssl_context=server_context)
        target = Target.parse(f"https://127.0.0.1:{upstream.port}/v1/chat/completions")
        body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        pool = HTTPPool(ssl_context=client_context)
        for _ in range(2):  # the second request reuses the kept-alive TLS connection
            response = await pool.request("POST", target, {}, body.encode())
            assert response.status == 200
            assert json.loads(response.body)["choices"][0]["message"]["content"]
        streamed = await pool.stream(
            "POST", target, {}, json.dumps({**json.loads(body), "stream": True}).encode())
        data = await streamed.aread()
        await streamed.aclose()
        assert data.endswith(b"data: [DONE]\n\n")
        assert len(upstream.connections) == 1
        untrusting = HTTPPool()  # the system CAs do not know this certificate
        with pytest.raises(ConnectError):
            await untrusting.request("POST", target, {}, body.encode())
        await pool.aclose()

    asyncio.run(main())
