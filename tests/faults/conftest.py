from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import SimpleNamespace

import httpx

from tests.faults.seed import UPSTREAM_KEY
from tests.servers import sandbox_and_gateway, server_env

_gateways = itertools.count(1)


@contextmanager
def running_gateway(*, sandbox_port: int, database_url: str, redis_url: str | None, workers: int = 2,
                    **env_overrides: str) -> Iterator[SimpleNamespace]:
    """The sandbox and the production start (gunicorn, uvicorn workers) on free ports, with a
    Redis of the test's choosing (or none) and a cache prefix of their own."""
    env = server_env(DATABASE_URL=database_url, TOLLGATE_PROVIDER_FAULTS_UPSTREAM_KEY=UPSTREAM_KEY,
                     TOLLGATE_CACHE_PREFIX=f"tgfault{os.getpid()}x{next(_gateways)}", **env_overrides)
    env.pop("REDIS_URL", None)
    if redis_url:
        env["REDIS_URL"] = redis_url
    with sandbox_and_gateway(env=env, sandbox_port=sandbox_port, workers=workers, upstream_key=UPSTREAM_KEY,
                             log_name="faults-") as running:
        yield running


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no answer (connection error or client timeout)
    code: str | None
    request_id: str | None
    answered: bool  # a complete answer: 200 with the body (or the stream's terminal event)


class Load:
    """Clients in threads sending requests back to back (every third a stream), noting each outcome."""

    def __init__(self, url: str, key: str, *, clients: int = 4, model: str = "faults-demo",
                 timeout: float = 15.0) -> None:
        self.url, self.key, self.model, self.timeout = url, key, model, timeout
        self.stop = threading.Event()
        self.outcomes: list[Outcome] = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(clients)]

    def _run(self, index: int) -> None:
        headers = {"authorization": f"Bearer {self.key}"}
        with httpx.Client(base_url=self.url, headers=headers, timeout=self.timeout) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                outcome = self._one(client, stream=(index + n) % 3 == 0)
                with self.lock:
                    self.outcomes.append(outcome)
                if outcome.status != 200:
                    time.sleep(0.05)  # as a client backs off; keeps the log small while down

    def _one(self, client: httpx.Client, *, stream: bool) -> Outcome:
        body = {"model": self.model, "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 20,
                "stream": stream}
        started = time.monotonic()
        try:
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                content = response.read()
                code = None
                if response.status_code != 200:
                    try:
                        code = response.json()["error"]["code"]
                    except Exception:
                        code = "unreadable"
                answered = response.status_code == 200 and (
                    content.rstrip().endswith(b"data: [DONE]") if stream else b'"choices"' in content)
                return Outcome(started, time.monotonic(), response.status_code, code,
                               response.headers.get("x-request-id"), answered)
        except httpx.HTTPError as exc:
            return Outcome(started, time.monotonic(), None, exc.__class__.__name__, None, False)

    def between(self, start: float, end: float) -> list[Outcome]:
        with self.lock:
            return [o for o in self.outcomes if start <= o.started < end]

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def wait_for(predicate, *, timeout: float, interval: float = 0.1) -> float:
    """Seconds until predicate() was true; raises AssertionError after timeout."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if predicate():
            return time.monotonic() - started
        time.sleep(interval)
    raise AssertionError(f"not true within {timeout}s")
