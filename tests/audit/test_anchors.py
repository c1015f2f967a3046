"""A chain that cannot be rewound unseen (issue #17): the head's MAC, key ids, signed anchors."""
from __future__ import annotations

from io import StringIO

import orjson
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from audit.chain import chain_keyring, chain_verify, head_mac, key_id_of
from audit.models import AuditAnchor, AuditChainHead, AuditEvent
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


# --- Anchors ----------------------------------------------------------------------


@pytest.fixture
def signing(tmp_path, settings):
    """An anchor signing key in a file, an export directory, and the public key for auditors."""
    from audit.anchors import private_key_new

    key_file = tmp_path / "anchor.key"
    key_file.write_bytes(private_key_new())
    settings.TOLLGATE_AUDIT_ANCHOR_KEY_FILE = str(key_file)
    settings.TOLLGATE_AUDIT_EXPORT_DIR = str(tmp_path / "exports")
    public = tmp_path / "anchor.pub"
    out = StringIO()
    call_command("audit_anchor_key", "--public", stdout=out)
    public.write_text(out.getvalue())
    return tmp_path


def test_anchors_are_numbered_linked_signed_and_exported(signing):
    from audit.anchors import anchor_write
    from audit.tasks import audit_anchor

    add_events(10)
    first = anchor_write()
    add_events(3)
    assert audit_anchor() == 2
    files = sorted(p.name for p in (signing / "exports").iterdir())
    assert files == ["anchor-1.json", "anchor-2.json"]
    second = AuditAnchor.objects.get(number=2)
    assert orjson.loads(second.body)["previous"] == first.digest
    assert orjson.loads(second.body)["heads"][0]["seq"] == 13
    assert "events verified (against anchor 2)" in verify()
    out = verify("--anchors", str(signing / "exports"), "--public-key", str(signing / "anchor.pub"))
    assert "2 anchors verified offline" in out


def test_a_rewind_under_an_anchor_fails_even_with_the_chain_key(signing, settings):
    """An insider who knows the chain key can reseal a rewound head; the anchor still shows it."""
    from audit.anchors import anchor_write

    add_events(20)
    anchor_write()
    rewind(5)
    key = settings.TOLLGATE_AUDIT_CHAIN_KEY.encode()
    head = AuditChainHead.objects.get(pk=1)
    AuditChainHead.objects.filter(pk=1).update(mac=head_mac(head.seq, head.hash, head.key_id, key=key))
    assert chain_verify().ok  # the chain alone looks whole
    with pytest.raises(CommandError, match=r"below event 20 recorded by anchor 1 \(chain rewound\)") as error:
        verify()
    assert error.value.returncode == 2
    # Dropping the anchor from the database too leaves the copy in the export directory.
    AuditAnchor.objects.all().delete()
    with pytest.raises(CommandError, match="chain rewound"):
        verify()


def test_a_rewound_head_with_a_wrongly_recomputed_mac_fails_under_an_anchor(signing):
    from audit.anchors import anchor_write

    add_events(20)
    anchor_write()
    rewind(5)
    head = AuditChainHead.objects.get(pk=1)
    AuditChainHead.objects.filter(pk=1).update(mac=head_mac(head.seq, head.hash, head.key_id, key=b"wrong"))
    with pytest.raises(CommandError, match="does not match its MAC"):
        verify()


def test_a_replaced_anchored_row_fails(signing):
    from audit.anchors import anchor_write

    add_events(6)
    anchor_write()
    AuditEvent.objects.filter(seq=6).update(hash="f" * 64)
    with pytest.raises(CommandError, match="event 6"):
        verify()


def test_a_gap_in_anchor_numbers_fails_offline(signing):
    from audit.anchors import anchor_write

    add_events(3)
    for _ in range(3):
        anchor_write()
    (signing / "exports" / "anchor-2.json").unlink()
    with pytest.raises(CommandError, match="anchor 2 is missing"):
        verify("--anchors", str(signing / "exports"), "--public-key", str(signing / "anchor.pub"))


def test_a_tampered_anchor_signature_fails(signing):
    from audit.anchors import anchor_write

    add_events(3)
    anchor_write()
    path = signing / "exports" / "anchor-1.json"
    document = orjson.loads(path.read_bytes())
    document["signature"] = ("0" if document["signature"][0] != "0" else "1") + document["signature"][1:]
    path.write_bytes(orjson.dumps(document))
    args = ("--anchors", str(signing / "exports"), "--public-key", str(signing / "anchor.pub"))
    with pytest.raises(CommandError, match="signature is not genuine"):
        verify(*args)
    # A re-signed body with another key is no better.
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from audit.anchors import canonical, private_key_new

    document["anchor"]["heads"][0]["seq"] = 1
    forged = load_pem_private_key(private_key_new(), password=None)
    document["signature"] = forged.sign(canonical(document["anchor"])).hex()
    path.write_bytes(orjson.dumps(document))
    with pytest.raises(CommandError, match="digest"):
        verify(*args)


def test_unsigned_anchors_are_reported(settings, tmp_path):
    from audit.anchors import anchor_write

    settings.TOLLGATE_AUDIT_EXPORT_DIR = str(tmp_path)
    add_events(3)
    assert anchor_write().signature == ""
    err = StringIO()
    call_command("audit_verify", stdout=StringIO(), stderr=err)
    assert "anchors are not signed" in err.getvalue()
