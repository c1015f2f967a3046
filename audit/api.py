"""The audit log in the admin REST API: list, filter, read one, export, and usage per day (read-only)."""
from __future__ import annotations

from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import CursorPagination
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response

from audit.exports import EXPORT_COLUMNS, FORMATS, export_filename, export_record, export_response, parse_moment
from audit.models import AuditEvent
from audit.permissions import IsAuditReader
from audit.selectors import events_in_range, usage_summary
from gateway_site.lib.api_errors import query_int


class AuditEventSerializer(serializers.BaseSerializer):
    """The same record, with the same field names, as the CSV and JSONL exports."""

    def to_representation(self, instance: AuditEvent) -> dict:
        return export_record(tuple(getattr(instance, column) for column in EXPORT_COLUMNS))


class AuditEventPagination(CursorPagination):
    # A cursor on the primary key: constant time on any page of a huge table.
    ordering = "-seq"
    page_size = 100
    page_size_query_param = "page_size"
    max_page_size = 1000


def _query(request):
    """The query parameters, refused (400 naming the parameter) if one holds a NUL character:
    PostgreSQL cannot compare text with one, and the error would otherwise be a 500."""
    params = request.query_params
    for name, value in params.items():
        if "\x00" in name or "\x00" in value:
            raise ValidationError({name.replace("\x00", ""): ["Must not contain NUL (\\u0000) characters."]})
    return params


def _moment(params, name: str, *, end: bool = False):
    value = params.get(name)
    if not value:
        return None
    try:
        return parse_moment(value, end=end)
    except ValueError as exc:
        raise ValidationError({name: [str(exc)]}) from None


class AuditEventViewSet(viewsets.ReadOnlyModelViewSet):
    """Audit events, newest first. Filters: since, until, consumer, status, route, provider, request_id."""

    serializer_class = AuditEventSerializer
    permission_classes = [IsAuditReader]
    pagination_class = AuditEventPagination
    lookup_field = "request_id"
    lookup_value_regex = "[^/]+"

    def get_queryset(self):
        params = _query(self.request)
        events = AuditEvent.objects.all()
        since, until = _moment(params, "since"), _moment(params, "until", end=True)
        if since is not None:
            events = events.filter(time__gte=since)
        if until is not None:
            events = events.filter(time__lt=until)
        for param, column in (("consumer", "consumer_name"), ("route", "route"), ("provider", "provider"),
                              ("request_id", "request_id"), ("error_class", "error_class")):
            if params.get(param):
                events = events.filter(**{column: params[param]})
        if params.get("status"):
            if not params["status"].isdigit():
                raise ValidationError({"status": ["A status must be a number, e.g. 429."]})
            events = events.filter(status=int(params["status"]))
        return events

    def perform_content_negotiation(self, request, force=False):
        # `format` names the export's file format here, not a DRF renderer.
        if self.action == "export":
            return JSONRenderer(), JSONRenderer.media_type
        return super().perform_content_negotiation(request, force)

    @action(detail=False, methods=["get"], url_path="export")
    def export(self, request):
        """Stream events with since <= time < until (a date as until includes that day) as CSV or JSONL."""
        params = _query(request)
        fmt = (params.get("format") or "jsonl").lower()
        if fmt not in FORMATS:
            raise ValidationError({"format": [f"Use one of: {', '.join(FORMATS)}."]})
        since, until = _moment(params, "since"), _moment(params, "until", end=True)
        if since is not None and until is not None and until <= since:
            raise ValidationError({"until": ["'until' must be after 'since'."]})
        consumer = params.get("consumer") or None
        events = events_in_range(since=since, until=until, consumer=consumer)
        return export_response(request, events, fmt, export_filename(fmt, since, until, consumer))


# --- Usage summaries (from the audit log and its daily rollup, as the dashboard) ---------


class DaySerializer(serializers.Serializer):
    day = serializers.DateField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()
    # DRF's metaclass moves declared fields off the class, so `errors` does not shadow Serializer.errors.
    errors = serializers.IntegerField()  # type: ignore[assignment]
    failovers = serializers.IntegerField()


class TopSerializer(serializers.Serializer):
    name = serializers.CharField()
    requests = serializers.IntegerField()
    tokens = serializers.IntegerField()
    cost_micros = serializers.IntegerField()
    # DRF's metaclass moves declared fields off the class, so `errors` does not shadow Serializer.errors.
    errors = serializers.IntegerField()  # type: ignore[assignment]


class UsageSummarySerializer(serializers.Serializer):
    since = serializers.DateField()
    until = serializers.DateField()
    totals = DaySerializer()
    days = DaySerializer(many=True)
    consumers = TopSerializer(many=True)
    models = TopSerializer(many=True)
    providers = TopSerializer(many=True)


class UsageViewSet(viewsets.ViewSet):
    """Requests, tokens, cost, errors and failovers per UTC day, and the top consumers, models and providers."""

    permission_classes = [IsAuditReader]

    @extend_schema(
        parameters=[OpenApiParameter("days", int, description="1 to 90 (default 30)."),
                    OpenApiParameter("consumer", str, description="Only this consumer (its name).")],
        responses=UsageSummarySerializer,
    )
    def list(self, request):
        consumer = _query(request).get("consumer") or None
        days = query_int(request, "days") or 30
        if not 1 <= days <= 90:
            raise ValidationError({"days": ["From 1 to 90."]})
        return Response(UsageSummarySerializer(usage_summary(days=days, consumer=consumer)).data)
