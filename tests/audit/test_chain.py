"""The hash chain shows an edited, a deleted and an inserted row; audit_verify reports it."""
from __future__ import annotations

import hashlib
import hmac
from datetime import UTC, datetime

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import CHAIN_FIELDS, chain_key, chain_verify, event_hash
from audit.models import AuditChainHead, AuditEvent
from tests.audit.conftest import add_events

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
    """usage_source (issue #16) is hashed only when it holds a value: a row sealed by a gateway that
    did not know the column (NULL in it) keeps its hash; a row that has one cannot have it edited."""
    add_events(3, usage_source="estimated")
    add_events(2)
    old = AuditEvent.objects.get(seq=5)
    assert old.usage_source is None
    # The hash an older gateway computed: the same values without the column.
    values = [getattr(old, f) for f in CHAIN_FIELDS if f != "usage_source"]
    payload = orjson.dumps([v.astimezone(UTC).isoformat(timespec="microseconds") if isinstance(v, datetime) else v
                            for v in values])
    assert old.hash == hmac.new(chain_key(), payload, hashlib.sha256).hexdigest()
    assert chain_verify().ok
    AuditEvent.objects.filter(seq=2).update(usage_source="provider")
    assert chain_verify().broken_seq == 2
