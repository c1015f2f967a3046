"""The end of a request: the budget's settlement and the audit event's commit go on side by side,
before the answer, or a stream's last event, is released."""
from __future__ import annotations

import asyncio

import orjson
import pytest
from asgiref.sync import async_to_sync
from django.test import AsyncClient

from audit.models import AuditEvent
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


async def _stream_recording_order(path: str, body: dict,
                                  headers: dict[str, str]) -> tuple[str, list[tuple[bytes, bool]]]:
    """The request id; each chunk the client receives, and whether the audit event was stored when it arrived."""
    response = await AsyncClient().post(path, data=orjson.dumps(body), content_type="application/json",
                                        headers=headers)
    # By request id: end-to-end tests that ran before may have left events of their own.
    stored = AuditEvent.objects.filter(request_id=response["x-request-id"])
    return response["x-request-id"], [(chunk, await stored.aexists()) async for chunk in response.streaming_content]


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "body", "last_event"), [
    # Same format (the sandbox speaks OpenAI): bytes through; the other format: through the translation.
    ("/v1/chat/completions", {**HELLO, "stream": True}, b"data: [DONE]"),
    ("/v1/messages", {**HELLO, "max_tokens": 50, "stream": True}, b"event: message_stop"),
])
def test_a_streams_last_event_is_released_only_after_it_is_recorded(personas, demo_route, path, body,
                                                                       last_event):
    _, seen = async_to_sync(_stream_recording_order)(path, body,
                                                     {"Authorization": f"Bearer {personas.alice_key}"})
    assert seen[-1][0].lstrip().startswith(last_event) and seen[-1][1], "recorded before the last event"
    assert not any(stored for _, stored in seen[:-1]), "recorded once the stream ends, not before"


@pytest.mark.django_db
@pytest.mark.parametrize(("path", "body"), [
    ("/v1/chat/completions", {**HELLO, "stream": True}),
    ("/v1/messages", {**HELLO, "max_tokens": 50, "stream": True}),
])
def test_a_cut_stream_is_recorded_before_its_error_event_is_released(personas, sandbox_provider, demo_route,
                                                                      path, body):
    # The sandbox cuts the stream after two chunks, asked through the provider's extra headers.
    sandbox_provider.extra_headers = {"x-sandbox-disconnect-after": "2"}
    sandbox_provider.save()
    request_id, seen = async_to_sync(_stream_recording_order)(path, body,
                                                              {"Authorization": f"Bearer {personas.alice_key}"})
    assert b"stream ended early" in seen[-1][0] and seen[-1][1]
    assert not any(stored for _, stored in seen[:-1])
    assert AuditEvent.objects.get(request_id=request_id).error_class == "stream_interrupted"
