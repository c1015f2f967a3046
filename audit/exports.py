"""CSV and JSONL exports of audit events, streamed in constant memory.

Both formats carry the same records with the same field names. The lanes of the chain
are merged in time order (the request's arrival, then seq); each record carries its
lane, lane_seq and prev_hash, so a lane's chain can be followed within an export. Rows are read
with a database cursor in chunks (`iterator(chunk_size=...)`) and encoded chunk
by chunk, so memory does not grow with the number of rows exported.
"""
from __future__ import annotations

import csv
import io
from collections.abc import AsyncIterator, Generator, Iterator
from datetime import UTC, date, datetime, time
from decimal import Decimal

import orjson
from asgiref.sync import sync_to_async
from django.db.models import QuerySet
from django.http import HttpRequest, StreamingHttpResponse
from django.utils.dateparse import parse_date, parse_datetime

# (export field name, model field name). The names are the contract with users' tools.
EXPORT_FIELDS: tuple[tuple[str, str], ...] = (
    ("time", "time"),
    ("request_id", "request_id"),
    ("consumer_id", "consumer_id"),
    ("consumer", "consumer_name"),
    ("key_prefix", "key_prefix"),
    ("route", "route"),
    ("provider", "provider"),
    ("upstream_model", "upstream_model"),
    ("endpoint", "endpoint"),
    ("status", "status"),
    ("error_class", "error_class"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    # Token classes (issue #16): parts of prompt_tokens (cache reads and writes) and of
    # completion_tokens (reasoning); empty in rows sealed before them (format 1).
    ("cache_read_tokens", "cache_read_tokens"),
    ("cache_write_tokens", "cache_write_tokens"),
    ("cache_write_1h_tokens", "cache_write_1h_tokens"),
    ("reasoning_tokens", "reasoning_tokens"),
    ("usage_source", "usage_source"),
    ("cost_usd", "cost_micros"),
    ("latency_ms", "latency_us"),
    ("ttft_ms", "ttft_us"),
    ("attempts", "attempts"),
    ("client_ip", "client_ip"),
    ("user_agent", "user_agent"),
    ("body_mode", "body_mode"),
    ("request_body", "request_body"),
    ("response_body", "response_body"),
    ("seq", "seq"),
    ("lane", "lane"),
    ("lane_seq", "lane_seq"),
    ("format", "format"),
    ("prev_hash", "prev_hash"),
    ("hash", "hash"),
)
FIELD_NAMES = tuple(name for name, _ in EXPORT_FIELDS)
EXPORT_COLUMNS = tuple(column for _, column in EXPORT_FIELDS)
_TIME, _COST, _LATENCY, _TTFT = (EXPORT_COLUMNS.index(c) for c in ("time", "cost_micros", "latency_us", "ttft_us"))
CHUNK_SIZE = 2000
FORMATS = ("jsonl", "csv")
CONTENT_TYPES = {"jsonl": "application/x-ndjson; charset=utf-8", "csv": "text/csv; charset=utf-8"}
# Spreadsheets run cells that start with these as formulas; user agents and
# bodies come from clients, so CSV cells get a leading apostrophe (OWASP advice).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _micros_to_decimal(value: int | None, places: int = 6) -> float | None:
    if value is None:
        return None
    return float(Decimal(value).scaleb(-places))


def _record(row: tuple) -> list:
    values = list(row)
    values[_TIME] = values[_TIME].astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z")
    values[_COST] = _micros_to_decimal(values[_COST])
    values[_LATENCY] = _micros_to_decimal(values[_LATENCY], 3)
    values[_TTFT] = _micros_to_decimal(values[_TTFT], 3)
    return values


def export_record(row: tuple) -> dict:
    """One event (a values_list row in EXPORT_FIELDS order) as an export record."""
    return dict(zip(FIELD_NAMES, _record(row), strict=True))


def _rows(events: QuerySet) -> Iterator[tuple]:
    return events.values_list(*EXPORT_COLUMNS).iterator(chunk_size=CHUNK_SIZE)


def _csv_cell(value: object) -> object:
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def _encode_jsonl(rows: list[tuple]) -> bytes:
    return b"".join(orjson.dumps(dict(zip(FIELD_NAMES, _record(row), strict=True))) + b"\n" for row in rows)


def _encode_csv(rows: list[tuple], *, header: bool) -> bytes:
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180: quotes where needed, CRLF line ends
    if header:
        buffer.write("\ufeff")  # a BOM, so spreadsheets read the file as UTF-8
        writer.writerow(FIELD_NAMES)
    for row in rows:
        writer.writerow([_csv_cell(v) for v in _record(row)])
    return buffer.getvalue().encode("utf-8")


def _batches(rows: Iterator[tuple], size: int) -> Iterator[list[tuple]]:
    batch: list[tuple] = []
    for row in rows:
        batch.append(row)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def export_chunks(events: QuerySet, fmt: str, *, batch: int = 500,
                  stats: dict | None = None) -> Generator[bytes, None, None]:
    """The export of `events` as byte chunks (a few hundred rows each); counts rows into stats["rows"]."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}")
    stats = stats if stats is not None else {}
    stats.setdefault("rows", 0)
    header = fmt == "csv"
    for rows in _batches(_rows(events), batch):
        stats["rows"] += len(rows)
        if fmt == "csv":
            yield _encode_csv(rows, header=header)
            header = False
        else:
            yield _encode_jsonl(rows)
    if header:  # no rows: still a valid CSV file with its header
        yield _encode_csv([], header=True)


async def export_chunks_async(events: QuerySet, fmt: str) -> AsyncIterator[bytes]:
    """The same chunks for an ASGI response: each chunk is read in the request's DB thread.

    Django would otherwise collect a synchronous iterator into one list before
    sending it under ASGI, which is exactly the memory growth exports must avoid.
    """
    chunks = export_chunks(events, fmt)
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    try:
        while (chunk := await step()) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()


def export_filename(fmt: str, since: datetime | None, until: datetime | None, consumer: str | None) -> str:
    parts = ["audit"]
    if consumer:
        parts.append("".join(c for c in consumer if c.isalnum() or c in "-_."))
    for moment in (since, until):
        if moment is not None:
            parts.append(moment.strftime("%Y%m%dT%H%M%S"))
    return "-".join(parts) + "." + fmt


def export_response(request: HttpRequest, events: QuerySet, fmt: str, filename: str) -> StreamingHttpResponse:
    """A streaming download; async under ASGI, sync under WSGI, so neither side buffers it."""
    http_request = getattr(request, "_request", request)  # DRF wraps Django's request
    under_asgi = hasattr(http_request, "scope")
    content = export_chunks_async(events, fmt) if under_asgi else export_chunks(events, fmt)
    response = StreamingHttpResponse(content, content_type=CONTENT_TYPES[fmt])
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "no-store"
    return response


def parse_moment(value: str, *, end: bool = False) -> datetime:
    """An ISO date (midnight UTC; with end=True, midnight after it) or datetime (UTC if naive)."""
    value = value.strip()
    moment = parse_datetime(value) if ("T" in value or " " in value) else None
    if moment is None:
        day = parse_date(value)
        if day is None:
            raise ValueError(f"{value!r} is not an ISO date (2025-01-31) or datetime (2025-01-31T12:00:00Z)")
        if end:
            day = date.fromordinal(day.toordinal() + 1)
        return datetime.combine(day, time.min, tzinfo=UTC)
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment
