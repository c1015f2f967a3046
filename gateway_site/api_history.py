"""The admin history (Django's LogEntry: who changed what, in the admin or the admin API), read-only in
the admin API: list, filter, read one, export as CSV or JSONL beside the audit log's export.

Who may read it: the audit log's readers (gateway-admin, compliance, superusers).
"""
from __future__ import annotations

import csv
import io
import json
from collections.abc import AsyncIterator, Iterator
from datetime import UTC

import orjson
from asgiref.sync import sync_to_async
from django.contrib.admin.models import ADDITION, CHANGE, DELETION, LogEntry
from django.db.models import QuerySet
from django.http import StreamingHttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer

from audit.exports import CONTENT_TYPES, FORMATS, parse_moment
from audit.permissions import IsAuditReader

ACTIONS = {ADDITION: "addition", CHANGE: "change", DELETION: "deletion"}
FLAGS = {name: flag for flag, name in ACTIONS.items()}
# The export's field names: a contract with compliance's tools, as the audit export's are.
FIELD_NAMES = ("id", "time", "user", "user_id", "action", "app_label", "model", "object_id", "object_repr",
               "fields", "change_message", "summary")
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")  # spreadsheets run such cells (as in audit/exports.py)
CHUNK_SIZE = 1000


def _changed_fields(change_message: str) -> list[str]:
    """The field labels of the admin's `[{"changed": {"fields": [...]}}]` messages; none for a sentence."""
    try:
        messages = json.loads(change_message or "[]")
    except ValueError:
        return []
    if not isinstance(messages, list):
        return []
    return [str(field) for message in messages if isinstance(message, dict)
            for field in (message.get("changed") or {}).get("fields", [])]


def history_record(entry: LogEntry) -> dict:
    """One history row as the API and both export formats give it."""
    content_type = entry.content_type
    return {
        "id": entry.pk,
        "time": entry.action_time.astimezone(UTC).isoformat(timespec="microseconds").replace("+00:00", "Z"),
        "user": entry.user.get_username() if entry.user_id else None,
        "user_id": entry.user_id,
        "action": ACTIONS.get(entry.action_flag, str(entry.action_flag)),
        "app_label": content_type.app_label if content_type else None,
        "model": content_type.model if content_type else None,
        "object_id": entry.object_id,
        "object_repr": entry.object_repr,
        "fields": _changed_fields(entry.change_message),
        "change_message": entry.change_message,
        "summary": str(entry.get_change_message()),
    }


class HistoryEntrySerializer(serializers.Serializer):
    id = serializers.IntegerField()
    time = serializers.DateTimeField()
    user = serializers.CharField(allow_null=True)
    user_id = serializers.IntegerField(allow_null=True)
    action = serializers.ChoiceField(choices=list(FLAGS))
    app_label = serializers.CharField(allow_null=True)
    model = serializers.CharField(allow_null=True)
    object_id = serializers.CharField(allow_null=True)
    object_repr = serializers.CharField()
    # DRF's metaclass moves declared fields off the class, so `fields` does not shadow Serializer.fields.
    fields = serializers.ListField(  # type: ignore[assignment]
        child=serializers.CharField(), help_text="Labels of the changed fields.")
    change_message = serializers.CharField(help_text="As stored by the admin: JSON, or a sentence for an action.")
    summary = serializers.CharField(help_text="The change message as the admin shows it.")

    def to_representation(self, instance: LogEntry) -> dict:
        return history_record(instance)


class HistoryPagination(CursorPagination):
    ordering = "-id"  # a cursor on the primary key: constant time on any page
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


def _csv_cell(value: object) -> object:
    if isinstance(value, list):
        value = "; ".join(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


def export_chunks(entries: QuerySet, fmt: str) -> Iterator[bytes]:
    """The export of `entries` as byte chunks, read from the database in chunks (constant memory)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer)  # RFC 4180: quotes where needed, CRLF line ends
    if fmt == "csv":
        buffer.write("\ufeff")  # a BOM, so spreadsheets read the file as UTF-8
        writer.writerow(FIELD_NAMES)
    for count, entry in enumerate(entries.iterator(chunk_size=CHUNK_SIZE), start=1):
        record = history_record(entry)
        if fmt == "jsonl":
            buffer.write(orjson.dumps(record).decode() + "\n")
        else:
            writer.writerow([_csv_cell(record[name]) for name in FIELD_NAMES])
        if count % 200 == 0:  # a few hundred rows a chunk: one thread hop each under ASGI, not one a row
            yield buffer.getvalue().encode("utf-8")
            buffer.seek(0)
            buffer.truncate()
    if buffer.tell():
        yield buffer.getvalue().encode("utf-8")


async def _export_chunks_async(entries: QuerySet, fmt: str) -> AsyncIterator[bytes]:
    # Under ASGI Django would collect a synchronous iterator into one list first (audit/exports.py).
    chunks = export_chunks(entries, fmt)
    step = sync_to_async(lambda: next(chunks, None), thread_sensitive=True)
    try:
        while (chunk := await step()) is not None:
            yield chunk
    finally:
        await sync_to_async(chunks.close, thread_sensitive=True)()  # type: ignore[attr-defined]  # a generator


def _moment(params, name: str, *, end: bool = False):
    value = params.get(name)
    if not value:
        return None
    try:
        return parse_moment(value, end=end)
    except ValueError as exc:
        raise ValidationError({name: [str(exc)]}) from None


_FILTERS = [
    OpenApiParameter("since", str, description="ISO date or datetime (UTC); changes at or after it."),
    OpenApiParameter("until", str, description="Changes before it; a date includes that whole day."),
    OpenApiParameter("user", str, description="Who made the change (user name)."),
    OpenApiParameter("action", str, enum=list(FLAGS)),
    OpenApiParameter("model", str, description="What was changed, as app.model, e.g. budgets.consumer."),
    OpenApiParameter("object_id", str, description="The changed object's id (with model)."),
]


@extend_schema_view(
    list=extend_schema(parameters=[*_FILTERS, OpenApiParameter("page_size", int, description="At most 1000.")]),
    export=extend_schema(
        parameters=[*_FILTERS, OpenApiParameter("format", str, enum=list(FORMATS))],
        responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR),
                   (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR)},
    ),
)
class AdminHistoryViewSet(viewsets.ReadOnlyModelViewSet):
    """The admin history, newest first: every addition, change and deletion, in the admin or this API."""

    serializer_class = HistoryEntrySerializer
    permission_classes = [IsAuditReader]
    pagination_class = HistoryPagination
    queryset = LogEntry.objects.none()

    def get_queryset(self):
        params = self.request.query_params
        entries = LogEntry.objects.select_related("user", "content_type").order_by("-id")
        since, until = _moment(params, "since"), _moment(params, "until", end=True)
        if since is not None:
            entries = entries.filter(action_time__gte=since)
        if until is not None:
            entries = entries.filter(action_time__lt=until)
        if params.get("user"):
            entries = entries.filter(user__username=params["user"])
        if params.get("action"):
            if params["action"] not in FLAGS:
                raise ValidationError({"action": [f"Use one of: {', '.join(FLAGS)}."]})
            entries = entries.filter(action_flag=FLAGS[params["action"]])
        if params.get("model"):
            app_label, _, model = params["model"].lower().partition(".")
            entries = entries.filter(content_type__app_label=app_label, content_type__model=model)
        if params.get("object_id"):
            entries = entries.filter(object_id=params["object_id"])
        return entries

    def perform_content_negotiation(self, request, force=False):
        # `format` names the export's file format here, not a DRF renderer (as in audit/api.py).
        if self.action == "export":
            return JSONRenderer(), JSONRenderer.media_type
        return super().perform_content_negotiation(request, force)

    @action(detail=False, methods=["get"], url_path="export")
    def export(self, request):
        """Stream the filtered history, oldest first, as CSV or JSONL (the same fields as the list)."""
        fmt = (request.query_params.get("format") or "jsonl").lower()
        if fmt not in FORMATS:
            raise ValidationError({"format": [f"Use one of: {', '.join(FORMATS)}."]})
        entries = self.get_queryset().order_by("id")
        http_request = getattr(request, "_request", request)
        under_asgi = hasattr(http_request, "scope")
        content = _export_chunks_async(entries, fmt) if under_asgi else export_chunks(entries, fmt)
        response = StreamingHttpResponse(content, content_type=CONTENT_TYPES[fmt])
        parts = ["admin-history", *(m.strftime("%Y%m%dT%H%M%S") for m in (
            _moment(request.query_params, "since"), _moment(request.query_params, "until", end=True)) if m)]
        response["Content-Disposition"] = f'attachment; filename="{"-".join(parts)}.{fmt}"'
        response["Cache-Control"] = "no-store"
        return response
