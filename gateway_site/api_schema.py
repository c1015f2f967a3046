"""OpenAPI descriptions of the audit log's API views, which describe their own output by hand,
and of the admin session authentication (the browsable API's cookie).

drf-spectacular extensions (loaded by gateway_site.api_urls), so audit/api.py stays as it is.
"""
from __future__ import annotations

from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiSerializerExtension, OpenApiViewExtension
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, extend_schema_view

_INTEGER = ("consumer_id", "status", "prompt_tokens", "completion_tokens", "attempts", "seq", "lane", "lane_seq",
            "format", "cache_read_tokens", "cache_write_tokens", "cache_write_1h_tokens", "reasoning_tokens")
_NUMBER = ("cost_usd", "latency_ms", "ttft_ms")


class AuditEventSerializerExtension(OpenApiSerializerExtension):
    target_class = "audit.api.AuditEventSerializer"

    def map_serializer(self, auto_schema, direction):
        from audit.exports import FIELD_NAMES

        properties = {}
        for name in FIELD_NAMES:
            if name in _INTEGER:
                properties[name] = {"type": "integer", "nullable": True}
            elif name in _NUMBER:
                properties[name] = {"type": "number", "nullable": True}
            elif name == "time":
                properties[name] = {"type": "string", "format": "date-time"}
            else:
                properties[name] = {"type": "string", "nullable": True}
        return {"type": "object", "properties": properties}


_FILTERS = [
    OpenApiParameter("since", str, description="ISO date or datetime (UTC); events at or after it."),
    OpenApiParameter("until", str, description="Events before it; a date includes that whole day."),
    OpenApiParameter("consumer", str, description="Consumer name."),
]


class AuditEventViewExtension(OpenApiViewExtension):
    target_class = "audit.api.AuditEventViewSet"

    def view_replacement(self):
        @extend_schema_view(
            list=extend_schema(parameters=[
                *_FILTERS,
                OpenApiParameter("status", int), OpenApiParameter("route", str), OpenApiParameter("provider", str),
                OpenApiParameter("request_id", str), OpenApiParameter("error_class", str),
                OpenApiParameter("page_size", int, description="At most 1000."),
            ]),
            export=extend_schema(
                parameters=[*_FILTERS, OpenApiParameter("format", str, enum=["jsonl", "csv"])],
                responses={(200, "application/x-ndjson"): OpenApiResponse(OpenApiTypes.STR),
                           (200, "text/csv"): OpenApiResponse(OpenApiTypes.STR)},
            ),
        )
        class Described(self.target_class):
            pass

        return Described


class AdminSessionScheme(SessionScheme):
    """The session cookie, as for DRF's SessionAuthentication (ours adds the TOTP rule)."""

    target_class = "gateway_site.auth_drf.AdminSessionAuthentication"
    priority = 0
