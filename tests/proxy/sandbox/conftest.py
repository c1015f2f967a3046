from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from types import SimpleNamespace

import httpx
import openai
import pytest
import uvicorn

from proxy.sandbox import SandboxConfig, make_app


@pytest.fixture(scope="module")
def sandbox_server() -> Iterator[SimpleNamespace]:
    """One real sandbox (uvicorn, httptools) on a free local port for the whole module."""
    app = make_app(SandboxConfig())
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning",
                                           access_log=False, lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the sandbox did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    # One client for the module: creating one per request costs more than the request.
    http = httpx.Client(timeout=10)
    try:
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", app=app, http=http)
    finally:
        http.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture
def sandbox(sandbox_server) -> SimpleNamespace:
    """The module's sandbox, back to its startup config with empty stats and request log."""
    sandbox_server.http.post(f"{sandbox_server.url}/_sandbox/reset").raise_for_status()
    return sandbox_server


@pytest.fixture
def oai(sandbox) -> openai.OpenAI:
    """The official OpenAI SDK, pointed at the sandbox: it proves the wire formats parse."""
    return openai.OpenAI(base_url=f"{sandbox.url}/v1", api_key="sk-test", max_retries=0, timeout=10)
