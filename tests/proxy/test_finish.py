"""The end of a request: the budget's settlement and the audit event's commit go on side by side."""
from __future__ import annotations

import asyncio

import pytest

from tests.proxy.client import chat

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


@pytest.mark.django_db
def test_settling_and_the_audit_write_are_in_flight_together(personas, demo_route, monkeypatch):
    import proxy.admission
    import proxy.pipeline

    settle_began, audit_began = asyncio.Event(), asyncio.Event()
    record = proxy.pipeline.record

    async def settle(ctx) -> None:
        settle_began.set()
        # Had the audit write to wait for settling (or the other way round), this would time out.
        await asyncio.wait_for(audit_began.wait(), 5)
        ctx.stages["settle"] = 0.0

    async def audit(ctx) -> None:
        audit_began.set()
        await asyncio.wait_for(settle_began.wait(), 5)
        await record(ctx)

    monkeypatch.setattr(proxy.admission, "_settle", settle)
    monkeypatch.setattr(proxy.pipeline, "record", audit)
    response = chat(personas.alice_key, HELLO)
    assert response.status_code == 200, response.content
    assert settle_began.is_set() and audit_began.is_set()
