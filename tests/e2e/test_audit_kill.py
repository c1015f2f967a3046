"""Kill a gateway worker (SIGKILL) under load: every request a client saw answered has its audit event."""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from audit.chain import chain_verify
from audit.models import AuditEvent

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]

BODY = {"model": "demo", "messages": [{"role": "user", "content": "Say hello"}]}


def worker_pids(master: int) -> list[int]:
    """The gunicorn master's children (its workers), from /proc."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may contain spaces; ppid follows it.
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == master:
            pids.append(int(entry.name))
    return pids


class Load:
    """Clients in threads, each sending requests back to back and noting what was fully answered."""

    def __init__(self, gateway, clients: int = 6) -> None:
        self.gateway = gateway
        self.stop = threading.Event()
        self.answered: list[str] = []
        self.failed = 0
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(clients)]

    def run(self, index: int) -> None:
        headers = {"authorization": f"Bearer {self.gateway.key}"}
        with httpx.Client(base_url=self.gateway.url, headers=headers, timeout=10) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                stream = (index + n) % 3 == 0
                try:
                    request_id = self.one(client, stream=stream)
                except httpx.HTTPError:
                    request_id = None
                with self.lock:
                    if request_id:
                        self.answered.append(request_id)
                    else:
                        self.failed += 1

    def one(self, client: httpx.Client, *, stream: bool) -> str | None:
        if not stream:
            response = client.post("/v1/chat/completions", json=BODY)
            ok = response.status_code == 200 and response.json()["choices"]
            return response.headers["x-request-id"] if ok else None
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            body = response.read()  # raises if the connection dies before the end
            ok = response.status_code == 200 and body.rstrip().endswith(b"data: [DONE]")
            return response.headers["x-request-id"] if ok else None

    def __enter__(self) -> Load:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=30)


def test_no_answered_request_loses_its_audit_event_when_a_worker_is_killed(gateway):
    master = gateway.process.pid
    before = worker_pids(master)
    assert len(before) == 2, before
    with Load(gateway) as load:
        time.sleep(2.0)
        answered_before_kill = len(load.answered)
        os.kill(before[0], signal.SIGKILL)
        time.sleep(3.0)
    assert answered_before_kill > 20, "the load did not get going"
    assert before[0] not in worker_pids(master)
    answered = set(load.answered)
    stored = set(AuditEvent.objects.filter(request_id__in=answered).values_list("request_id", flat=True))
    missing = answered - stored
    print(f"answered {len(answered)}, failed {load.failed}, audited {AuditEvent.objects.count()}, "
          f"missing {len(missing)}")
    assert not missing
    # Two processes (and the replacement worker) extended one chain; it must still verify.
    report = chain_verify()
    assert report.ok, report.problem
