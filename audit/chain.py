"""The hash chain: each event's HMAC covers its values and the previous event's hash in its lane.

An edited row no longer matches its own hash; a deleted row leaves a gap in its lane's
`lane_seq` and breaks the next row's link; an inserted row cannot carry a valid HMAC
without the chain key, and each lane's head (updated in the same transaction as every
append to the lane) names the lane's last event, so rows removed or added at the end
show as well. The signed anchors (audit.anchors) record every lane's head at once.

Lanes (issue #18): the chain is split into TOLLGATE_AUDIT_LANES lanes with a head each,
so concurrent writers lock different rows instead of queueing on one. `seq` stays the
primary key, unique over all lanes and growing with time (a sequence on PostgreSQL);
`lane_seq` is the place in the lane. Rows written before lanes are lane 0.

Format versions (issue #16): version 1 (NULL in `format`) hashes CHAIN_FIELDS_V1, with
usage_source only when it holds a value (OPTIONAL_TAIL); version 2 hashes every column of
CHAIN_FIELDS, the format, lane and token classes included, so none of them can be edited.
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

# The columns format version 1 hashes, in a fixed order.
CHAIN_FIELDS_V1: tuple[str, ...] = (
    "seq", "prev_hash", "time", "request_id", "consumer_id", "consumer_name", "key_prefix", "route",
    "provider", "upstream_model", "endpoint", "status", "error_class", "prompt_tokens", "completion_tokens",
    "cost_micros", "latency_us", "ttft_us", "attempts", "client_ip", "user_agent", "body_mode",
    "request_body", "response_body", "usage_source",
)
# Version 1: columns added after rows were first chained, hashed only when they hold a value, so a
# row written before a column existed (NULL in it) keeps the hash it was sealed with.
OPTIONAL_TAIL = 1
# Token classes (issue #16): parts of prompt_tokens and completion_tokens, as the provider billed them.
TOKEN_FIELDS: tuple[str, ...] = ("cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens",
                                 "reasoning_tokens")
# Every stored column except key_id and the hash itself: what version 2 hashes, in the order rows
# are written (audit.services): version 1's, the token classes, then format, lane and lane_seq.
CHAIN_FIELDS: tuple[str, ...] = (*CHAIN_FIELDS_V1, *TOKEN_FIELDS, "format", "lane", "lane_seq")
FORMAT = 2  # the version new rows are written with
_FORMAT, _LANE, _LANE_SEQ = (CHAIN_FIELDS.index(f) for f in ("format", "lane", "lane_seq"))


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


def head_mac(seq: int, last_hash: str, key_id: str | None, *, key: bytes, lane: int = 0) -> str:
    """A lane head's MAC over its seq, last hash, key id and lane: a head moved back by
    someone without the key no longer matches. (Lane 0's payload is the one-chain head's.)"""
    payload = orjson.dumps(["tollgate-audit-head", seq, last_hash, key_id, *([lane] if lane else [])])
    return hmac.new(key, payload, hashlib.sha256).hexdigest()


def head_fields(seq: int, last_hash: str, *, lane: int = 0) -> dict:
    """The columns of a lane head moved to (seq, last_hash), MAC included: write them all
    in the transaction that appends the rows."""
    key_id, key = chain_signing_key()
    return {"seq": seq, "hash": last_hash, "key_id": key_id,
            "mac": head_mac(seq, last_hash, key_id, key=key, lane=lane)}


def head_problem(head: AuditChainHead) -> str:
    """Why the stored head is not authentic, or "" if its MAC matches."""
    if head.seq == 0 and not head.mac:
        return ""  # a fresh head, before the first append
    key = chain_keyring().get(head.key_id)
    if key is None:
        return f"the chain head was sealed with key {head.key_id}, which is not configured"
    if not hmac.compare_digest(head.mac, head_mac(head.seq, head.hash, head.key_id, key=key, lane=head.lane)):
        return (f"the chain head of lane {head.lane} (event {head.seq}) does not match its MAC "
                f"(head moved without the key)")
    return ""


def _canonical(value: object) -> object:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    return value


def event_hash(values: tuple, *, key: bytes | None = None) -> str:
    """The HMAC-SHA256 of an event's values (prev_hash included): CHAIN_FIELDS_V1's for a
    version 1 row (its optional tail hashed only when set), CHAIN_FIELDS' for version 2."""
    if len(values) == len(CHAIN_FIELDS_V1):
        cut = len(values)
        while cut > len(CHAIN_FIELDS_V1) - OPTIONAL_TAIL and values[cut - 1] is None:
            cut -= 1
        values = values[:cut]
    elif len(values) != len(CHAIN_FIELDS):
        raise ValueError(f"an event has {len(CHAIN_FIELDS_V1)} or {len(CHAIN_FIELDS)} chained values")
    payload = orjson.dumps([_canonical(v) for v in values])
    return hmac.new(key or chain_key(), payload, hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    checked: int
    broken_seq: int | None = None
    problem: str = ""
    request_id: str = ""
    lane: int | None = None
    lanes: int = 0  # lanes walked

    @property
    def ok(self) -> bool:
        return self.broken_seq is None and not self.problem


def chain_verify(*, since: datetime | None = None, chunk_size: int = 5000) -> ChainReport:
    """Walk every lane of the chain (from `since`, or from its start) and report the first break."""
    heads = list(AuditChainHead.objects.order_by("id"))
    if not any(head.id == 1 for head in heads):
        heads.insert(0, AuditChainHead(pk=1))  # lane 0: rows from before lanes, or a fresh log
    checked = 0
    for head in heads:
        report = _lane_verify(head, since=since, chunk_size=chunk_size)
        checked += report.checked
        if not report.ok:
            return ChainReport(checked, report.broken_seq, report.problem, report.request_id, head.lane)
    lanes = [head.lane for head in heads]
    stray = AuditEvent.objects.exclude(lane__in=lanes).order_by("seq").values_list("seq", "lane", "request_id").first()
    if stray is not None:
        return ChainReport(checked, stray[0], f"event {stray[0]} is in lane {stray[1]}, which has no head "
                           f"(row inserted)", stray[2], stray[1])
    return ChainReport(checked, lanes=len(heads))


def _lane_verify(head: AuditChainHead, *, since: datetime | None, chunk_size: int) -> ChainReport:
    lane = head.lane
    problem = head_problem(head)
    if problem:
        return ChainReport(0, head.seq, problem)
    ring = chain_keyring()
    legacy = _legacy_candidates(ring)
    events = AuditEvent.objects.filter(lane=lane)
    end = head.seq
    if since is None:
        start, expected_prev = head.pruned_seq + 1, head.pruned_hash
    else:
        first = events.filter(time__gte=since, lane_seq__lte=end).order_by("lane_seq").values_list(
            "lane_seq", flat=True).first()
        if first is None:
            return ChainReport(checked=0)
        start = first
        before = events.filter(lane_seq=first - 1).values_list("hash", flat=True).first()
        if before is not None:
            expected_prev = before
        elif first - 1 == head.pruned_seq:
            expected_prev = head.pruned_hash
        else:
            return ChainReport(checked=0, broken_seq=first, problem=(
                f"event {first - 1} of lane {lane}, just before the first checked event, is missing (row deleted)"))
    rows = (events.filter(lane_seq__gte=start, lane_seq__lte=end).order_by("lane_seq", "seq")
            .values_list(*CHAIN_FIELDS, "key_id", "hash").iterator(chunk_size=chunk_size))
    expected = start
    checked = 0
    keyed = versioned = False
    last_seq = 0
    for row in rows:
        seq, prev_hash, request_id, place = row[0], row[1], row[3], row[_LANE_SEQ]
        if place < expected:
            return ChainReport(checked, seq, f"event {seq} repeats place {place} of lane {lane} (row inserted)",
                               request_id)
        if place != expected:
            return ChainReport(checked, seq, (
                f"events {expected}..{place - 1} of lane {lane} are missing before event {seq} (rows deleted)"),
                request_id)
        if prev_hash != expected_prev:
            return ChainReport(checked, seq, (
                f"event {seq} does not link to the event before it in lane {lane} "
                f"(a row was replaced, inserted or deleted)"), request_id)
        fmt = row[_FORMAT] or 1
        if fmt == 1:
            # Version 1 rows are lane 0's history from before lanes and versions: they come first,
            # and their place is their seq (which their hash covers).
            if versioned or lane != 0 or place != seq:
                return ChainReport(checked, seq, f"event {seq} claims format version 1 in lane {lane} at place "
                                   f"{place} (row forged)", request_id)
        elif fmt != FORMAT:
            return ChainReport(checked, seq, f"event {seq} has an unknown format version {fmt}", request_id)
        versioned = versioned or fmt != 1
        if seq <= last_seq:
            return ChainReport(checked, seq, f"event {seq} follows event {last_seq} in lane {lane} (reordered)",
                               request_id)
        last_seq = seq
        key_id = row[-2]
        if key_id is None and keyed:
            # Legacy rows only precede keyed ones; a later one was forged with the old key.
            return ChainReport(checked, seq, f"event {seq} claims the legacy key after keyed events (row forged)",
                               request_id)
        keyed = keyed or key_id is not None
        values = row[:len(CHAIN_FIELDS_V1)] if fmt == 1 else row[:len(CHAIN_FIELDS)]
        if not _row_matches(values, row[-1], key_id, ring, legacy):
            return ChainReport(checked, seq, f"event {seq}'s values do not match its hash (row edited or forged)",
                               request_id)
        expected_prev = row[-1]
        expected += 1
        checked += 1
    if expected - 1 != end and end >= start:
        return ChainReport(checked, expected, (
            f"the head of lane {lane} names its event {end}, but the lane ends at {expected - 1} (rows deleted)"))
    if end >= start and expected_prev != head.hash:
        return ChainReport(checked, end, f"event {end} of lane {lane} is not the one its head recorded")
    extra = events.filter(lane_seq__gt=end).order_by("lane_seq").values_list("seq", "lane_seq", "request_id").first()
    if extra is not None and not _appended_since(head, extra[1]):
        return ChainReport(checked, extra[0], f"event {extra[0]} lies beyond the head of lane {lane} (row inserted)",
                           extra[2])
    return ChainReport(checked)


def _row_matches(values: tuple, stored: str, key_id: str | None, ring: dict[str | None, bytes],
                 legacy: list[bytes]) -> bool:
    keys = legacy if key_id is None else [ring[key_id]] if key_id in ring else []
    for i, key in enumerate(keys):
        if hmac.compare_digest(event_hash(values, key=key), stored):
            if i:  # the next legacy row most likely used the same key: try it first
                legacy.insert(0, legacy.pop(i))
            return True
    return False


def _appended_since(head: AuditChainHead, lane_seq: int) -> bool:
    """Whether an event past the lane head we read was legitimately appended meanwhile."""
    current = AuditChainHead.objects.filter(pk=head.pk).values_list("seq", flat=True).first() or 0
    return lane_seq <= current and current > head.seq


def iter_chunks(iterable: Iterator, size: int) -> Iterator[list]:
    chunk: list = []
    for item in iterable:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
