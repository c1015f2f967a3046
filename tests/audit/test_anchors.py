"""A chain that cannot be rewound unseen (issue #17): the head's MAC, key ids, signed anchors."""
from __future__ import annotations

from io import StringIO

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import chain_keyring, chain_verify, head_mac, key_id_of
from audit.models import AuditChainHead, AuditEvent
from tests.audit.conftest import add_events

pytestmark = pytest.mark.django_db


def verify(*args) -> str:
    out = StringIO()
    call_command("audit_verify", *args, stdout=out, stderr=out)
    return out.getvalue()


def rewind(events: int) -> None:
    """What an attacker with database access but no key does: drop the newest rows, move the head back."""
    head = AuditChainHead.objects.get(pk=1)
    AuditEvent.objects.filter(seq__gt=head.seq - events).delete()
    sixth = AuditEvent.objects.order_by("-seq").first()
    AuditChainHead.objects.filter(pk=1).update(seq=sixth.seq, hash=sixth.hash)


def test_the_head_carries_a_mac_of_the_configured_key(settings):
    add_events(12, batch=5)
    head = AuditChainHead.objects.get(pk=1)
    key = settings.TOLLGATE_AUDIT_CHAIN_KEY.encode()
    assert head.key_id == key_id_of(key)
    assert head.mac == head_mac(12, head.hash, head.key_id, key=key)
    assert set(AuditEvent.objects.values_list("key_id", flat=True)) == {head.key_id}


def test_a_rewound_head_fails_even_without_anchors():
    add_events(20, batch=3)
    rewind(5)
    with pytest.raises(CommandError, match="does not match its MAC") as error:
        verify()
    assert error.value.returncode == 2


def test_a_head_mac_recomputed_with_a_wrong_key_fails():
    add_events(20)
    rewind(5)
    head = AuditChainHead.objects.get(pk=1)
    AuditChainHead.objects.filter(pk=1).update(mac=head_mac(head.seq, head.hash, head.key_id, key=b"guessed"))
    with pytest.raises(CommandError, match="does not match its MAC"):
        verify()


def test_legacy_rows_still_verify_after_a_key_is_configured(settings):
    settings.TOLLGATE_AUDIT_CHAIN_KEY = ""  # an install from before: the key derived from SECRET_KEY
    add_events(8)
    assert set(AuditEvent.objects.values_list("key_id", flat=True)) == {None}
    settings.TOLLGATE_AUDIT_CHAIN_KEY = "the-new-explicit-chain-key"
    add_events(4)
    assert AuditEvent.objects.filter(key_id=key_id_of(b"the-new-explicit-chain-key")).count() == 4
    assert "12 events verified" in verify()


def test_old_keys_verify_their_rows_after_a_key_change(settings):
    settings.TOLLGATE_AUDIT_CHAIN_KEY = "first-key"
    add_events(5)
    settings.TOLLGATE_AUDIT_CHAIN_KEY = "second-key"
    add_events(5)
    with pytest.raises(CommandError, match="event 1's values"):
        verify()
    settings.TOLLGATE_AUDIT_CHAIN_OLD_KEYS = ["first-key"]
    assert key_id_of(b"first-key") in chain_keyring()
    assert chain_verify().checked == 10


def test_a_legacy_row_after_keyed_rows_is_refused(settings):
    add_events(6)
    AuditEvent.objects.filter(seq=6).update(key_id=None)
    assert "legacy key after keyed events" in chain_verify().problem
