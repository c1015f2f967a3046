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


@lru_cache(maxsize=4)
def _derived_key(secret_key: str, chain_key: str) -> bytes:
    if chain_key:
        return chain_key.encode()
    return hmac.new(secret_key.encode(), b"tollgate-audit-chain", hashlib.sha256).digest()


def chain_key() -> bytes:
    return _derived_key(settings.SECRET_KEY, settings.TOLLGATE_AUDIT_CHAIN_KEY)


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
    key = chain_key()
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
            .values_list(*CHAIN_FIELDS, "hash").iterator(chunk_size=chunk_size))
    expected_seq = start_seq
    checked = 0
    for row in rows:
        seq, prev_hash, request_id = row[0], row[1], row[3]
        if seq != expected_seq:
            return ChainReport(checked, seq, (
                f"events {expected_seq}..{seq - 1} are missing before event {seq} (rows deleted)"), request_id)
        if prev_hash != expected_prev:
            return ChainReport(checked, seq, (
                f"event {seq} does not link to event {seq - 1} (a row was replaced, inserted or deleted)"),
                request_id)
        if not hmac.compare_digest(event_hash(row[:-1], key=key), row[-1]):
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
