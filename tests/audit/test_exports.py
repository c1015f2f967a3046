"""Exports: the listed field names, CSV a spreadsheet opens, JSONL that parses, constant memory."""
from __future__ import annotations

import csv
import io
import time
import tracemalloc
from datetime import UTC, datetime, timedelta

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.exports import FIELD_NAMES, export_chunks, parse_moment
from audit.models import AuditEvent
from audit.selectors import events_in_range
from tests.audit.conftest import add_events

pytestmark = pytest.mark.django_db

ISSUE_FIELDS = ("request_id", "consumer", "key_prefix", "route", "provider", "upstream_model", "status",
                "prompt_tokens", "completion_tokens", "cost_usd", "time", "endpoint", "error_class",
                "latency_ms", "ttft_ms", "attempts", "client_ip", "user_agent")
AWKWARD = 'Mozilla/5.0 "quoted", comma; naïve café 東京 🚀\nsecond line'


def export(fmt: str, **filters) -> bytes:
    return b"".join(export_chunks(events_in_range(**filters), fmt))


def test_records_carry_the_issue_field_names_in_both_formats():
    add_events(3)
    assert set(ISSUE_FIELDS) <= set(FIELD_NAMES)
    line = orjson.loads(export("jsonl").splitlines()[0])
    assert list(line) == list(FIELD_NAMES)
    assert line["cost_usd"] == 0.001234 and line["latency_ms"] == 52.0
    assert line["time"] == "2025-03-01T00:00:00.000000Z"
    header = next(csv.reader(io.StringIO(export("csv").decode("utf-8-sig"))))
    assert header == list(FIELD_NAMES)


def test_csv_round_trips_through_the_csv_module_with_quotes_newlines_and_unicode():
    add_events(2, user_agent=AWKWARD)
    add_events(1, user_agent="=HYPERLINK(\"http://evil\")")
    data = export("csv")
    assert data.startswith("\ufeff".encode())  # spreadsheets detect UTF-8 by the BOM
    rows = list(csv.DictReader(io.StringIO(data.decode("utf-8-sig"), newline="")))
    assert len(rows) == 3
    assert rows[0]["user_agent"] == AWKWARD
    assert rows[0]["cost_usd"] == "0.001234"
    assert sorted(r["user_agent"] for r in rows)[0] == "'=HYPERLINK(\"http://evil\")", \
        "formulas must not run in a spreadsheet"


def test_jsonl_lines_parse_one_record_each():
    add_events(5, user_agent=AWKWARD)
    lines = export("jsonl").splitlines()
    assert len(lines) == 5
    assert all(orjson.loads(line)["user_agent"] == AWKWARD for line in lines)


def test_an_empty_range_exports_a_valid_file():
    assert export("jsonl") == b""
    assert export("csv").decode("utf-8-sig").strip() == ",".join(FIELD_NAMES)


def test_filters_by_range_and_consumer():
    start = datetime(2025, 3, 1, tzinfo=UTC)
    add_events(10, start=start, step=timedelta(hours=1))
    add_events(4, start=start, step=timedelta(hours=1), consumer="bob-batch")
    got = export("jsonl", since=start + timedelta(hours=2), until=start + timedelta(hours=5), consumer="bob-batch")
    assert [orjson.loads(x)["consumer"] for x in got.splitlines()] == ["bob-batch"] * 2


def _peak_export_memory(fmt: str) -> int:
    tracemalloc.start()
    try:
        for _ in export_chunks(events_in_range(), fmt):
            pass
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_large_export_streams_in_constant_memory():
    add_events(10_000)
    small = {fmt: _peak_export_memory(fmt) for fmt in ("jsonl", "csv")}
    add_events(40_000, start=datetime(2025, 3, 2, tzinfo=UTC))
    for fmt in ("jsonl", "csv"):
        started = time.perf_counter()
        large = _peak_export_memory(fmt)
        rate = 50_000 / (time.perf_counter() - started)
        print(f"{fmt}: peak {small[fmt] / 1e6:.1f} MB for 10k rows, {large / 1e6:.1f} MB for 50k; "
              f"{rate:,.0f} rows/s (under tracemalloc)")
        # Five times the rows; memory must not follow.
        assert large < small[fmt] * 1.5 + 1_000_000


def test_audit_export_command_writes_the_range(tmp_path):
    add_events(30, step=timedelta(hours=1))
    out = tmp_path / "march.jsonl"
    call_command("audit_export", "--since", "2025-03-01T05:00:00Z", "--until", "2025-03-01T10:00",
                 "--format", "jsonl", "--output", str(out), stdout=io.StringIO())
    assert len(out.read_bytes().splitlines()) == 5
    csv_out = tmp_path / "march.csv"
    call_command("audit_export", "--since", "2025-03-01", "--until", "2025-03-01", "--consumer", "alice-agent",
                 "--format", "csv", "--output", str(csv_out), stdout=io.StringIO())
    assert len(list(csv.reader(io.StringIO(csv_out.read_text(encoding="utf-8-sig"))))) == 25  # header + a day


def test_audit_export_command_rejects_bad_dates(tmp_path):
    with pytest.raises(CommandError, match="not an ISO date"):
        call_command("audit_export", "--since", "yesterday", "--until", "2025-03-01", "--output",
                     str(tmp_path / "x"))
    with pytest.raises(CommandError, match="after"):
        call_command("audit_export", "--since", "2025-03-02", "--until", "2025-03-01", "--output",
                     str(tmp_path / "x"))


def test_dates_and_datetimes_parse_as_utc():
    assert parse_moment("2025-03-01") == datetime(2025, 3, 1, tzinfo=UTC)
    assert parse_moment("2025-03-01", end=True) == datetime(2025, 3, 2, tzinfo=UTC)
    assert parse_moment("2025-03-01T10:00:00+02:00") == datetime(2025, 3, 1, 8, tzinfo=UTC)
    assert parse_moment("2025-03-01 10:00") == datetime(2025, 3, 1, 10, tzinfo=UTC)


def test_the_model_keeps_no_foreign_keys():
    assert not [f for f in AuditEvent._meta.get_fields() if f.is_relation]
