from __future__ import annotations

import pytest
from django.test import override_settings

from tests.proxy.client import chat

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


def stages(response) -> dict[str, float]:
    return {k: float(v) for k, v in (item.split("=") for item in response.headers["x-tollgate-stages"].split(";"))}


@pytest.mark.django_db
@override_settings(TOLLGATE_STAGE_TIMING=True)
def test_it_reports_the_time_of_each_stage_when_asked(personas, demo_route):
    response = chat(personas.alice_key, HELLO)
    assert response.status_code == 200
    timings = stages(response)
    assert {"auth", "parse", "route", "admit", "call", "upstream", "finish", "settle", "audit"} <= set(timings)
    assert all(value >= 0 for value in timings.values())
    # The stages in turn add up to no more than the whole request; settling the budget and
    # writing the audit event run side by side within `finish`.
    in_turn = {name: value for name, value in timings.items() if name not in ("settle", "audit")}
    assert sum(in_turn.values()) <= float(response.headers["x-tollgate-overhead-ms"]) + timings["upstream"] + 1
    assert max(timings["settle"], timings["audit"]) <= timings["finish"] + 0.01


@pytest.mark.django_db
def test_stage_timing_is_off_by_default(personas, demo_route):
    assert "x-tollgate-stages" not in chat(personas.alice_key, HELLO).headers
