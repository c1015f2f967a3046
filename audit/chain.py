"""The hash chain: each event's HMAC covers its values and the previous event's hash.

An edited row no longer matches its own hash; a deleted row leaves a gap in `seq`
and breaks the next row's link; an inserted row cannot carry a valid HMAC without
the chain key, and the chain head (updated in the same transaction as every
append) names the last event, so rows removed or added at the end show as well.
"""
from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

import orjson
from django.conf import settings

from audit.models import AuditChainHead, AuditEvent

# Every stored column except the hash itself, in a fixed order.
CHAIN_FIELDS: tuple[str, ...] = (
    "seq", "prev_hash", "time", "request_id", "consumer_id", "consumer_name", "key_prefix", "route",
    "provider", "upstream_model", "endpoint", "status", "error_class", "prompt_tokens", "completion_tokens",
    "cost_micros", "latency_us", "ttft_us", "attempts", "client_ip", "user_agent", "body_mode",
    "request_body", "response_body", "usage_source",
)
# Columns added after rows were first chained: hashed only when they hold a value, so a row written
# before a column existed (NULL in it) keeps the hash it was sealed with.
OPTIONAL_TAIL = 1


def _legacy_key(secret_key: str) -> bytes:
    """The key derived from SECRET_KEY that chained events before a chain key was required."""
    return hmac.new(secret_key.encode(), b"tollgate-audit-chain", hashlib.sha256).digest()


def key_id_of(key: bytes) -> str:
    """A key's short public name, stored with every row and head it sealed (not the key:
    an HMAC of a fixed label, so it tells keys apart without helping to guess one)."""
    return hmac.new(key, b"tollgate-audit-key-id", hashlib.sha256).hexdigest()[:16]


@lru_cache(maxsize=4)
def _keyring(secret_key: str, current: str, old: tuple[str, ...]) -> tuple[str | None, bytes, dict[str | None, bytes]]:
    if current:
        key = current.encode()
        key_id: str | None = key_id_of(key)
    else:  # only under DEBUG (settings refuse to start otherwise): the legacy derived key
        key, key_id = _legacy_key(secret_key), None
    ring: dict[str | None, bytes] = {key_id_of(k.encode()): k.encode() for k in old}
    ring[key_id] = key
    ring.setdefault(None, _legacy_key(secret_key))
    return key_id, key, ring


def chain_signing_key() -> tuple[str | None, bytes]:
    """The key id (None: the legacy derived key) and key that seal new rows and heads."""
    key_id, key, _ = _keyring(settings.SECRET_KEY, settings.TOLLGATE_AUDIT_CHAIN_KEY,
                              tuple(settings.TOLLGATE_AUDIT_CHAIN_OLD_KEYS))
    return key_id, key


def chain_key() -> bytes:
    return chain_signing_key()[1]


def chain_keyring() -> dict[str | None, bytes]:
    """Every key that may have sealed a stored row, by key id; None is the legacy derived key."""
    return _keyring(settings.SECRET_KEY, settings.TOLLGATE_AUDIT_CHAIN_KEY,
                    tuple(settings.TOLLGATE_AUDIT_CHAIN_OLD_KEYS))[2]


def _legacy_candidates(ring: dict[str | None, bytes]) -> list[bytes]:
    # Rows from before key ids (key_id null) were sealed with the derived key, or with a
    # TOLLGATE_AUDIT_CHAIN_KEY that was set explicitly back then: try each.
    return list(dict.fromkeys([ring[None], *(k for i, k in ring.items() if i is not None)]))


def head_mac(seq: int, last_hash: str, key_id: str | None, *, key: bytes) -> str:
    """The chain head's MAC over its seq, last hash and key id: a head moved back by
    someone without the key no longer matches."""
    payload = orjson.dumps(["tollgate-audit-head", seq, last_hash, key_id])
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def head_fields(seq: int, last_hash: str) -> dict:
    """The columns of a chain head moved to (seq, last_hash), MAC included: write them all
    in the transaction that appends the rows."""
    key_id, key = chain_signing_key()
    return {"seq": seq, "hash": last_hash, "key_id": key_id,
            "mac": head_mac(seq, last_hash, key_id, key=key)}


def head_problem(head: AuditChainHead) -> str:
    """Why the stored head is not authentic, or "" if its MAC matches."""
    if head.seq == 0 and not head.mac:
        return ""  # a fresh head, before the first append
    key = chain_keyring().get(head.key_id)
    if key is None:
        return f"the chain head was sealed with key {head.key_id}, which is not configured"
    if not hmac.compare_digest(head.mac, head_mac(head.seq, head.hash, head.key_id, key=key)):
        return f"the chain head (event {head.seq}) does not match its MAC (head moved without the key)"
    return ""


def _canonical(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def event_hash(values: tuple, *, key: bytes | None = None) -> str:
    """The HMAC-SHA256 of an event's CHAIN_FIELDS values (prev_hash included)."""
    if len(values) == len(CHAIN_FIELDS):
        cut = len(values)
        while cut > len(CHAIN_FIELDS) - OPTIONAL_TAIL and values[cut - 1] is None:
            cut -= 1
        values = values[:cut]
    payload = orjson.dumps([_canonical(v) for v in values])
    return hmac.new(key or chain_key(), payload, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    checked: int
    broken_seq: int | None = None
    problem: str = ""
    request_id: str = ""

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and not self.problem


def chain_verify(*, since: datetime | None = None, chunk_size: int = 5000) -> ChainReport:
    """Walk the chain (from `since`, or from its start) and report the first break."""
    head = AuditChainHead.objects.filter(pk=1).first() or AuditChainHead(pk=1)
    problem = head_problem(head)
    if problem:
        return ChainReport(0, head.seq, problem)
    ring = chain_keyring()
    legacy = _legacy_candidates(ring)
    end_seq = head.seq
    if since is None:
        start_seq, expected_prev = head.pruned_seq + 1, head.pruned_hash
    else:
        first = AuditEvent.objects.filter(time__gte=since, seq__lte=end_seq).order_by("seq").values_list(
            "seq", flat=True).first()
        if first is None:
            return ChainReport(checked=0)
        start_seq = first
        before = AuditEvent.objects.filter(seq=first - 1).values_list("hash", flat=True).first()
        if before is not None:
            expected_prev = before
        elif first - 1 == head.pruned_seq:
            expected_prev = head.pruned_hash
        else:
            return ChainReport(checked=0, broken_seq=first, problem=(
                f"event {first - 1}, just before the first checked event, is missing (row deleted)"))
    rows = (AuditEvent.objects.filter(seq__gte=start_seq, seq__lte=end_seq).order_by("seq")
            .values_list(*CHAIN_FIELDS, "key_id", "hash").iterator(chunk_size=chunk_size))
    expected_seq = start_seq
    checked = 0
    keyed = False
    for row in rows:
        seq, prev_hash, request_id = row[0], row[1], row[3]
        if seq != expected_seq:
            return ChainReport(checked, seq, (
                f"events {expected_seq}..{seq - 1} are missing before event {seq} (rows deleted)"), request_id)
        if prev_hash != expected_prev:
            return ChainReport(checked, seq, (
                f"event {seq} does not link to event {seq - 1} (a row was replaced, inserted or deleted)"),
                request_id)
        key_id = row[-2]
        if key_id is None and keyed:
            # Legacy rows only precede keyed ones; a later one was forged with the old key.
            return ChainReport(checked, seq, f"event {seq} claims the legacy key after keyed events (row forged)",
                               request_id)
        keyed = keyed or key_id is not None
        if not _row_matches(row, key_id, ring, legacy):
            return ChainReport(checked, seq, f"event {seq}'s values do not match its hash (row edited or forged)",
                               request_id)
        expected_prev = row[-1]
        expected_seq += 1
        checked += 1
    if expected_seq - 1 != end_seq and end_seq >= start_seq:
        return ChainReport(checked, expected_seq, (
            f"the chain head names event {end_seq}, but the events end at {expected_seq - 1} (rows deleted)"))
    if end_seq >= start_seq and expected_prev != head.hash:
        return ChainReport(checked, end_seq, f"event {end_seq} is not the one the chain head recorded")
    extra = AuditEvent.objects.filter(seq__gt=end_seq).order_by("seq").values_list("seq", "request_id").first()
    if extra is not None and not _appended_since(head, extra[0]):
        return ChainReport(checked, extra[0], f"event {extra[0]} lies beyond the chain head (row inserted)",
                           extra[1])
    return ChainReport(checked)


def _row_matches(row: tuple, key_id: str | None, ring: dict[str | None, bytes], legacy: list[bytes]) -> bool:
    keys = legacy if key_id is None else [ring[key_id]] if key_id in ring else []
    for i, key in enumerate(keys):
        if hmac.compare_digest(event_hash(row[:-2], key=key), row[-1]):
            if i:  # the next legacy row most likely used the same key: try it first
                legacy.insert(0, legacy.pop(i))
            return True
    return False


def _appended_since(head: AuditChainHead, seq: int) -> bool:
    """Whether an event past the head we read was legitimately appended meanwhile."""
    current = AuditChainHead.objects.filter(pk=1).values_list("seq", flat=True).first() or 0
    return seq <= current and current > head.seq


def iter_chunks(iterable: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
