"""Kill a gateway worker (SIGKILL) under load: every request a client saw answered has its audit event."""
from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from audit.chain import chain_verify
from audit.models import AuditEvent
from tests.faults.conftest import Load

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


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


def test_no_answered_request_loses_its_audit_event_when_a_worker_is_killed(gateway):
    master = gateway.process.pid
    before = worker_pids(master)
    assert len(before) == 2, before
    with Load(gateway.url, gateway.key, clients=6, model="demo", timeout=10) as load:
        # Until the load is going (a loaded machine takes longer than a quiet one), at most 30 s.
        deadline = time.monotonic() + 30
        answered_before_kill = 0
        while answered_before_kill <= 20 and time.monotonic() < deadline:
            time.sleep(0.5)
            answered_before_kill = sum(o.answered for o in load.between(0, time.monotonic()))
        os.kill(before[0], signal.SIGKILL)
        time.sleep(3.0)
    assert answered_before_kill > 20, "the load did not get going"
    assert before[0] not in worker_pids(master)
    answered = {o.request_id for o in load.outcomes if o.answered}
    failed = sum(not o.answered for o in load.outcomes)
    stored = set(AuditEvent.objects.filter(request_id__in=answered).values_list("request_id", flat=True))
    missing = answered - stored
    print(f"answered {len(answered)}, failed {failed}, audited {AuditEvent.objects.count()}, "
          f"missing {len(missing)}")
    assert not missing
    # Two processes (and the replacement worker) extended one chain; it must still verify.
    report = chain_verify()
    assert report.ok, report.problem
