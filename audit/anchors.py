"""Numbered, signed anchors of the chain heads (DESIGN §6), and their verification.

The head's MAC stops a rewind by someone without the chain key; an anchor stops one by
someone with it (or with a copy of the head from before). Anchor N holds the heads at
one moment and the SHA-256 of anchor N-1's body, signed with Ed25519; the private key is
in a file (TOLLGATE_AUDIT_ANCHOR_KEY_FILE), never in the database. Copies go to the export
directory (`anchor-<N>.json`) and the HTTP sink, outside the database's reach, so
deleting rows, moving the head and dropping anchors all at once still shows.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from audit.models import GENESIS_HASH, AuditAnchor, AuditChainHead, AuditEvent

logger = logging.getLogger(__name__)

# The name of the chain in an anchor's heads; each head also names its lane (absent: lane 0,
# as anchors written before lanes have it).
LANE = "main"


def canonical(body: dict) -> bytes:
    """The bytes that are signed and digested: sorted keys, no spaces (orjson is deterministic)."""
    return orjson.dumps(body, option=orjson.OPT_SORT_KEYS)


def private_key() -> Ed25519PrivateKey | None:
    """The anchor signing key from TOLLGATE_AUDIT_ANCHOR_KEY_FILE (PEM, PKCS#8), or None."""
    path = settings.TOLLGATE_AUDIT_ANCHOR_KEY_FILE
    if not path:
        return None
    key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    if not isinstance(key, Ed25519PrivateKey):
        raise ValueError(f"{path} holds no Ed25519 private key")
    return key


def private_key_new() -> bytes:
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def public_pem(key: Ed25519PrivateKey) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def public_key_load(path: str | Path) -> Ed25519PublicKey:
    key = serialization.load_pem_public_key(Path(path).read_bytes())
    if not isinstance(key, Ed25519PublicKey):
        raise ValueError(f"{path} holds no Ed25519 public key")
    return key


@dataclass(frozen=True)
class Anchor:
    number: int
    body: dict
    digest: str
    signature: str
    source: str = "database"

    def document(self) -> dict:
        """The anchor as written to `anchor-<N>.json` and sent to the sink."""
        return {"anchor": self.body, "digest": self.digest, "signature": self.signature}


def _from_row(row: AuditAnchor) -> Anchor:
    return Anchor(row.number, orjson.loads(row.body), row.digest, row.signature)


def anchor_write(*, now: datetime | None = None) -> Anchor:
    """Record anchor N+1 over the current heads, then copy it to the export directory and sink."""
    key = private_key()
    with transaction.atomic():
        # Every lane's head at one moment (a cross-anchor: the lanes are tied together here).
        heads = list(AuditChainHead.objects.order_by("id")) or [AuditChainHead(pk=1)]
        last = AuditAnchor.objects.order_by("-number").first()
        number = (last.number if last else 0) + 1
        body = {
            "number": number,
            "time": (now or timezone.now()).isoformat(),
            "heads": [{"chain": LANE, "lane": head.lane, "seq": head.seq, "hash": head.hash, "mac": head.mac,
                       "key_id": head.key_id} for head in heads],
            "previous": last.digest if last else GENESIS_HASH,
        }
        payload = canonical(body)
        signature = key.sign(payload).hex() if key else ""
        # The primary key makes a second writer of the same number fail instead of forking.
        row = AuditAnchor.objects.create(number=number, body=payload.decode(), signature=signature,
                                         digest=hashlib.sha256(payload).hexdigest())
    anchor = _from_row(row)
    _publish(anchor)
    return anchor


def _publish(anchor: Anchor) -> None:
    document = orjson.dumps(anchor.document(), option=orjson.OPT_INDENT_2) + b"\n"
    if settings.TOLLGATE_AUDIT_EXPORT_DIR:
        directory = Path(settings.TOLLGATE_AUDIT_EXPORT_DIR)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / f"anchor-{anchor.number}.json"
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        with open(partial, "wb") as out:
            out.write(document)
            out.flush()
            os.fsync(out.fileno())
        partial.replace(path)
    if settings.TOLLGATE_AUDIT_SINK_URL:
        from audit.sinks import SinkError, sink_post

        try:
            sink_post(document, f"anchor-{anchor.number}")
        except SinkError as exc:  # the next anchor links this one; the database and files hold it
            logger.warning("audit sink: anchor %d not delivered: %s", anchor.number, exc)


def anchors_stored() -> list[Anchor]:
    return [_from_row(row) for row in AuditAnchor.objects.order_by("number")]


def anchors_in(directory: str | Path) -> list[Anchor]:
    """The `anchor-<N>.json` files of a directory (export directory or an auditor's copy)."""
    found = []
    for path in sorted(Path(directory).glob("anchor-*.json")):
        try:
            document = orjson.loads(path.read_bytes())
            body = document["anchor"]
            found.append(Anchor(int(body["number"]), body, str(document["digest"]),
                                str(document.get("signature", "")), source=str(path)))
        except (OSError, ValueError, KeyError, TypeError) as exc:
            found.append(Anchor(-1, {}, "", "", source=f"{path} (unreadable: {exc.__class__.__name__})"))
    return found


@dataclass
class AnchorReport:
    newest: Anchor | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def anchors_check(anchors: list[Anchor], *, public_key: Ed25519PublicKey | None) -> AnchorReport:
    """Genuine (digest, signature) and continuous (1..N, each naming the one before): no database."""
    report = AnchorReport()
    by_number: dict[int, Anchor] = {}
    for anchor in anchors:
        if anchor.number < 1:
            report.problems.append(f"anchor file {anchor.source}")
            continue
        if hashlib.sha256(canonical(anchor.body)).hexdigest() != anchor.digest or \
                anchor.body.get("number") != anchor.number:
            report.problems.append(f"anchor {anchor.number} ({anchor.source}) does not match its digest (altered)")
            continue
        seen = by_number.setdefault(anchor.number, anchor)
        if seen.digest != anchor.digest:
            report.problems.append(f"anchor {anchor.number} differs between {seen.source} and {anchor.source}")
    if not by_number:
        report.warnings.append("no anchors found: rows can be rewound unseen until the first anchor")
        return report
    unsigned = 0
    previous = GENESIS_HASH
    lanes: dict[int, int] = {}  # each lane's place in the last anchor seen
    for number in range(1, max(by_number) + 1):
        found = by_number.get(number)
        if found is None:
            report.problems.append(f"anchor {number} is missing (anchors must run 1..{max(by_number)})")
            previous = ""
            continue
        anchor = found
        if previous and anchor.body.get("previous") != previous:
            report.problems.append(
                f"anchor {number} does not name anchor {number - 1}'s digest (chain of anchors broken)")
        previous = anchor.digest
        report.problems += _lanes_kept(anchor, lanes)
        if not anchor.signature:
            unsigned += 1
            if public_key is not None:
                report.problems.append(f"anchor {number} is not signed")
        elif public_key is not None:
            try:
                public_key.verify(bytes.fromhex(anchor.signature), canonical(anchor.body))
            except (InvalidSignature, ValueError):
                report.problems.append(f"anchor {number}'s signature is not genuine ({anchor.source})")
    if public_key is None:
        report.warnings.append("anchor signatures not checked: no public key (TOLLGATE_AUDIT_ANCHOR_KEY_FILE "
                               "or --public-key)" if unsigned < len(by_number) else
                               "anchors are not signed (no TOLLGATE_AUDIT_ANCHOR_KEY_FILE)")
    report.newest = by_number[max(by_number)]
    return report


def anchored_until(*, scan: int = 50) -> int:
    """The highest seq at or below which a genuine signed anchor vouches for every event (0: none).

    Genuine: its digest matches and its signature verifies with this installation's anchor key.
    Retention removes only rows at or below it, so what it removes was anchored outside the database."""
    key = private_key()
    if key is None:
        return 0
    public = key.public_key()
    for row in AuditAnchor.objects.exclude(signature="").order_by("-number")[:scan]:
        anchor = _from_row(row)
        payload = canonical(anchor.body)
        if hashlib.sha256(payload).hexdigest() != anchor.digest:
            continue
        try:
            public.verify(bytes.fromhex(anchor.signature), payload)
        except (InvalidSignature, ValueError):
            continue
        return _covered_seq(anchor)
    return 0


def _covered_seq(anchor: Anchor) -> int:
    """The highest seq at or below which every event is covered by the anchor's lane heads (0: none).

    An anchor names each lane's head by lane_seq; seq grows along every lane, so an event at or
    below the seq of every lane's anchored head is covered. A lane empty when anchored (lane_seq 0)
    covers nothing and is skipped; a lane whose anchored event retention already removed bounds the
    result by its first later event, if any.
    """
    bound: int | None = None
    for head in anchor.body.get("heads") or []:
        lane, lane_seq = int(head.get("lane", 0)), int(head["seq"])
        if lane_seq == 0:
            continue
        lane_events = AuditEvent.objects.filter(lane=lane)
        seq = lane_events.filter(lane_seq=lane_seq).values_list("seq", flat=True).first()
        if seq is None:
            later = lane_events.filter(lane_seq__gt=lane_seq).order_by("lane_seq").values_list(
                "seq", flat=True).first()
            if later is None:
                continue
            seq = later - 1
        bound = seq if bound is None else min(bound, seq)
    return bound or 0


def _lanes_kept(anchor: Anchor, lanes: dict[int, int]) -> list[str]:
    """Every lane of the anchors before is in this one, at the same place or further (no lane
    dropped or truncated between two anchors); updates `lanes` with this anchor's places."""
    problems = []
    places: dict[int, int] = {}
    for anchored in anchor.body.get("heads", []):
        try:
            places[int(anchored.get("lane", 0))] = int(anchored["seq"])
        except (KeyError, TypeError, ValueError):
            problems.append(f"anchor {anchor.number} holds an unreadable head")
    for lane, place in lanes.items():
        if lane not in places:
            problems.append(f"anchor {anchor.number} lacks lane {lane}, which anchors before it held (lane dropped)")
        elif places[lane] < place:
            problems.append(f"anchor {anchor.number} has lane {lane} at event {places[lane]}, below event {place} "
                            f"of an anchor before it (lane truncated)")
    lanes.update(places)
    return problems


def chain_against_anchor(anchor: Anchor) -> list[str]:
    """Whether the stored lane heads and rows still contain what the anchor recorded: no lane rewound
    or truncated (its head below the anchored one, or the anchored event gone or replaced)."""
    problems = []
    heads = {head.lane: head for head in AuditChainHead.objects.all()}
    for anchored in anchor.body.get("heads", []):
        lane, seq, hash_ = int(anchored.get("lane", 0)), int(anchored["seq"]), str(anchored["hash"])
        head = heads.get(lane) or AuditChainHead(pk=lane + 1)
        if head.seq < seq:
            problems.append(f"the head of lane {lane} is at event {head.seq}, below event {seq} recorded by anchor "
                            f"{anchor.number} (chain rewound)")
        if seq == 0 or seq < head.pruned_seq:
            continue  # nothing anchored yet, or pruned by retention
        stored = (head.pruned_hash if seq == head.pruned_seq else
                  AuditEvent.objects.filter(lane=lane, lane_seq=seq).values_list("hash", flat=True).first())
        if stored is None:
            problems.append(f"event {seq} of lane {lane}, recorded by anchor {anchor.number}, is missing "
                            f"(rows deleted)")
        elif not hmac.compare_digest(stored, hash_):
            problems.append(f"event {seq} of lane {lane} is not the one anchor {anchor.number} recorded "
                            f"(row replaced)")
    return problems
