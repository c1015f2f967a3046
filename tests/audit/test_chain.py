"""The hash chain shows an edited, a deleted and an inserted row; audit_verify reports it."""
from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import CHAIN_FIELDS, CHAIN_FIELDS_V1, chain_key, chain_verify, event_hash
from audit.models import AuditChainHead, AuditEvent
from tests.audit.conftest import add_events, add_v1_events

pytestmark = pytest.mark.django_db


@pytest.fixture
def chain():
    add_events(50, batch=7)
    return AuditChainHead.objects.get(pk=1)


def verify_output(*args) -> str:
    from io import StringIO

    out = StringIO()
    call_command("audit_verify", *args, stdout=out)
    return out.getvalue()


def test_an_untouched_chain_verifies(chain):
    assert chain.seq == 50
    assert chain_verify().checked == 50
    assert "50 events verified" in verify_output()


def test_it_detects_an_edited_row():
    add_events(50)
    AuditEvent.objects.filter(seq=20).update(prompt_tokens=1)
    report = chain_verify()
    assert (report.ok, report.broken_seq, report.checked) == (False, 20, 19)
    assert "edited" in report.problem
    with pytest.raises(CommandError, match="broken at event 20") as error:
        verify_output()
    assert error.value.returncode == 2


def test_it_detects_a_deleted_row(chain):
    AuditEvent.objects.filter(seq=31).delete()
    report = chain_verify()
    assert report.broken_seq == 32 and "missing" in report.problem


def test_it_detects_a_deleted_last_row(chain):
    AuditEvent.objects.filter(seq=50).delete()
    assert not chain_verify().ok


def test_it_detects_a_replaced_row_even_with_a_correctly_linked_hash(chain):
    """Someone who knows the format but not the chain key cannot forge a row."""
    event = AuditEvent.objects.get(seq=10)
    event.completion_tokens = 0
    values = tuple(getattr(event, f) for f in CHAIN_FIELDS)
    event.hash = event_hash(values, key=b"guessed-key")
    event.save()
    assert chain_verify().broken_seq == 10


def test_it_detects_an_inserted_row(chain):
    last = AuditEvent.objects.get(seq=50)
    forged = AuditEvent.objects.get(seq=50)
    forged.seq, forged.prev_hash, forged.request_id = 51, last.hash, "req_forged"
    forged.hash = event_hash(tuple(getattr(forged, f) for f in CHAIN_FIELDS), key=b"guessed-key")
    forged.save(force_insert=True)
    report = chain_verify()
    assert (report.ok, report.broken_seq) == (False, 51)
    assert "inserted" in report.problem


def test_it_detects_a_row_inserted_in_place_of_a_deleted_one(chain):
    original = AuditEvent.objects.get(seq=25)
    original.delete()
    original.seq, original.request_id, original.status = 25, "req_planted", 200
    original.save(force_insert=True)
    assert chain_verify().broken_seq == 25


def test_since_checks_from_a_point_and_links_to_the_event_before(chain):
    since = AuditEvent.objects.get(seq=40).time
    assert chain_verify(since=since).checked == 11
    assert "11 events verified" in verify_output("--since", since.isoformat())
    AuditEvent.objects.filter(seq=39).delete()
    assert not chain_verify(since=since).ok


def test_it_verifies_an_empty_log(db):
    assert chain_verify().ok and chain_verify().checked == 0
    assert chain_verify(since=datetime(2020, 1, 1, tzinfo=UTC)).ok


def test_rows_sealed_before_usage_source_existed_still_verify():
    """usage_source (issue #16) is hashed only when it holds a value in a format 1 row: a row sealed by
    a gateway that did not know the column (NULL in it) keeps its hash; a row that has one cannot have
    it edited."""
    add_v1_events(3, usage_source="estimated")
    add_v1_events(2)
    old = AuditEvent.objects.get(seq=5)
    assert old.usage_source is None and old.format is None
    # The hash an older gateway computed: the same values without the column.
    values = [getattr(old, f) for f in CHAIN_FIELDS_V1 if f != "usage_source"]
    payload = orjson.dumps([v.astimezone(UTC).isoformat(timespec="microseconds") if isinstance(v, datetime) else v
                            for v in values])
    assert old.hash == hmac.new(chain_key(), payload, hashlib.sha256).hexdigest()
    assert chain_verify().ok
    AuditEvent.objects.filter(seq=2).update(usage_source="provider")
    assert chain_verify().broken_seq == 2


def test_format_1_rows_verify_next_to_format_2_rows_in_one_lane():
    add_v1_events(4)
    add_events(3, cache_read_tokens=900, cache_write_tokens=50, cache_write_1h_tokens=0, reasoning_tokens=7)
    add_v1_events(0)
    rows = list(AuditEvent.objects.order_by("seq").values_list("format", "lane", "lane_seq", "cache_read_tokens"))
    assert rows == [(None, 0, 1, None), (None, 0, 2, None), (None, 0, 3, None), (None, 0, 4, None),
                    (2, 0, 5, 900), (2, 0, 6, 900), (2, 0, 7, 900)]
    report = chain_verify()
    assert report.ok and report.checked == 7, report.problem
    assert AuditEvent.objects.get(lane_seq=5).prev_hash == AuditEvent.objects.get(lane_seq=4).hash


@pytest.mark.parametrize("column", ["cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                                    "reasoning_tokens", "lane_seq", "format"])
def test_editing_a_format_2_column_breaks_verification(column):
    add_events(5, cache_read_tokens=900, cache_write_tokens=50, cache_write_1h_tokens=10, reasoning_tokens=7)
    assert chain_verify().ok
    third = AuditEvent.objects.get(lane_seq=3)
    # lane_seq 3 -> 30 leaves a gap; format 2 -> 1 (or NULL) would have the row checked by format 1's rule.
    AuditEvent.objects.filter(pk=third.pk).update(**{column: {"lane_seq": 30, "format": None}.get(column, 1)})
    report = chain_verify()
    assert not report.ok
    assert report.broken_seq in (third.seq, third.seq + 1)


def test_a_format_2_row_downgraded_to_format_1_with_a_format_1_hash_is_caught():
    """Someone without the key cannot recompute either hash; with a format 1 hash under a guessed key
    the row is still an edited one, and a format 1 row after a format 2 row is refused outright."""
    add_events(3)
    row = AuditEvent.objects.get(lane_seq=2)
    values = tuple(getattr(row, f) for f in CHAIN_FIELDS_V1)
    AuditEvent.objects.filter(pk=row.pk).update(format=None, hash=event_hash(values, key=chain_key()))
    report = chain_verify()
    assert report.broken_seq == row.seq and "forged" in report.problem
