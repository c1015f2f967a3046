"""Every value of an audit row is storable, whatever the request carried (issue #15)."""
from __future__ import annotations

import json
from datetime import UTC, datetime

import orjson
import pytest

from audit.chain import CHAIN_FIELDS, chain_verify
from audit.models import AuditEvent
from audit.records import AuditRecord, event_values, reduced_values
from audit.services import events_append
from audit.storable import MAX_BODY_DEPTH, REPLACEMENT, body_text, clean_text, storable_int, storable_text

GATEWAY_KEY = "tg-" + "Ab1_-" * 8 + "xyz"
COLUMN = {name: i - 2 for i, name in enumerate(CHAIN_FIELDS)}  # event_values starts after seq, prev_hash


def deep(levels: int) -> list:
    return json.loads("[" * levels + "]" * levels)


def record(**values) -> AuditRecord:
    fields = {"time": datetime(2025, 1, 1, tzinfo=UTC), "request_id": "req_storable", "endpoint": "chat.completions",
              "status": 200, **values}
    return AuditRecord(**fields)


def stored(values: tuple, name: str):
    return values[COLUMN[name]]


def test_nul_and_lone_surrogates_are_replaced_and_lengths_kept():
    assert clean_text("a\x00b") == f"a{REPLACEMENT}b"
    assert clean_text("caf\u00e9 \ud800 \udfff") == f"caf\u00e9 {REPLACEMENT} {REPLACEMENT}"
    assert clean_text("plain") == "plain"
    for text in ("x\x00" * 50, "\ud83d" * 10 + "é"):
        assert len(clean_text(text)) == len(text)
        clean_text(text).encode("utf-8")


def test_text_is_cut_to_its_column_after_redaction():
    text = "x" * 190 + GATEWAY_KEY  # the key straddles the column's end
    kept = storable_text(text, max_length=200, margin=256, redact=lambda t: t.replace(GATEWAY_KEY, "[R]"))
    assert kept == "x" * 190 + "[R]"
    assert storable_text("a" * 16000 + "@", max_length=200) == "a" * 200
    assert storable_text(b"bytes\xff", max_length=10) == f"bytes{REPLACEMENT}"
    assert storable_text(None, max_length=10) == ""


@pytest.mark.parametrize(("value", "expected"), [(200, 200), (70000, 32767), (-5, 0), ("not a number", None),
                                                 (True, None), (None, None), (2.5, 2), (float("nan"), None),
                                                 (float("inf"), None), (2**70, 32767)])
def test_numbers_are_kept_in_their_columns_range(value, expected):
    assert storable_int(value, low=0, high=32767, default=None) == expected


@pytest.mark.parametrize(("body", "reason"), [
    (deep(MAX_BODY_DEPTH + 46), "nested deeper than 254 levels"),
    ({"n": 2**70}, "Integer exceeds 64-bit range"),
])
def test_a_body_that_cannot_be_serialized_is_replaced_by_a_marker(body, reason):
    assert orjson.loads(body_text(body)) == {"_tollgate": f"body not storable: {reason}"}


def test_a_body_with_lone_surrogates_keeps_its_content():
    text = body_text({"messages": [{"role": "user", "content": "hi \ud800 there"}], "\udfffkey": 1})
    assert orjson.loads(text) == {"messages": [{"role": "user", "content": f"hi {REPLACEMENT} there"}],
                                  f"{REPLACEMENT}key": 1}


def test_non_finite_numbers_and_odd_keys_are_stored_as_json_can_hold_them():
    assert orjson.loads(body_text({"t": float("nan"), 1: float("inf")})) == {"t": None, "1": None}


HOSTILE = {
    "nul in model": {"route": "demo\x00", "upstream_model": "\x00"},
    "lone surrogates": {"route": "\ud800", "user_agent": "agent \udfff", "consumer_name": "\ud83d"},
    "over-long values": {"request_id": "r" * 500, "route": "a" * 16000 + "@", "user_agent": "u" * 20000,
                         "client_ip": "1" * 100, "error_class": "e" * 100, "endpoint": "n" * 100},
    "out of range numbers": {"status": 70000, "prompt_tokens": 2**40, "attempts": -3, "latency_us": 2**80},
    "wrong types": {"status": "200", "consumer_id": "7", "cost_micros": None, "body_mode": "everything"},
    "deep body": {"body_mode": "full", "request_body": deep(300), "response_body": b"ok"},
    "nul in content": {"body_mode": "full", "request_body": {"messages": [{"content": "a\x00b"}]},
                       "response_body": b"data: \x00\n\n"},
    "surrogate in metadata": {"body_mode": "metadata", "request_body": {"model": "m\ud800", "user": "x"}},
}


@pytest.mark.django_db
@pytest.mark.parametrize("name", list(HOSTILE))
def test_hostile_records_are_written_and_chained(name):
    events_append([record(request_id="req_before"), record(**{"request_id": f"req_{name}", **HOSTILE[name]}),
                   record(request_id="req_after")])
    assert AuditEvent.objects.count() == 3
    assert chain_verify().ok
    assert not AuditEvent.objects.filter(error_class="audit_reduced").exists(), "the sanitizer should suffice"


def test_values_fit_their_columns():
    values = event_values(record(**HOSTILE["over-long values"], key_prefix="k" * 40))
    for name in ("request_id", "route", "user_agent", "client_ip", "error_class", "endpoint", "key_prefix"):
        assert len(stored(values, name)) == AuditEvent._meta.get_field(name).max_length, name
    assert stored(values, "route") == "a" * 200


def test_the_deep_body_is_a_marker_and_the_response_is_kept():
    values = event_values(record(**HOSTILE["deep body"]))
    assert "body not storable" in stored(values, "request_body")
    assert stored(values, "response_body") == "ok"


def test_the_reduced_row_keeps_who_when_and_what_answer():
    original = record(request_id="req_\x00x", status=404, error_class="model_not_found", consumer_id=7,
                      consumer_name="alice", key_prefix="tg-abcdefg", route="secret route", user_agent="ua",
                      client_ip="10.0.0.1", body_mode="full", request_body={"a": 1}, prompt_tokens=5)
    values = reduced_values(original, reason="DataError: refused")
    assert stored(values, "request_id") == f"req_{REPLACEMENT}x"
    assert (stored(values, "status"), stored(values, "error_class")) == (404, "model_not_found")
    assert (stored(values, "consumer_id"), stored(values, "key_prefix"), stored(values, "endpoint")) == (
        7, "tg-abcdefg", "chat.completions")
    assert stored(values, "route") == stored(values, "user_agent") == stored(values, "response_body") == ""
    assert stored(values, "prompt_tokens") is None and stored(values, "body_mode") == "none"
    assert orjson.loads(stored(values, "request_body")) == {"_tollgate": "audit row reduced: DataError: refused"}
    assert stored(reduced_values(record(), reason="x"), "error_class") == "audit_reduced"
