"""The audit log in the admin: browsable and filterable, read-only for everyone, exportable."""
from __future__ import annotations

from django import forms
from django.contrib import admin
from django.contrib.admin.models import LogEntry
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponseBase
from django.template.response import TemplateResponse
from django.urls import path, reverse

from audit.exports import FORMATS, export_filename, export_response, parse_moment
from audit.models import AuditEvent, AuditExport, AuditSinkCursor
from audit.permissions import is_audit_reader
from audit.selectors import events_in_range


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete, for anyone (superusers included)."""

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class ExportForm(forms.Form):
    since = forms.CharField(help_text="ISO date or datetime (UTC), e.g. 2025-01-01 or 2025-01-01T08:00:00Z")
    until = forms.CharField(help_text="Exclusive for a datetime; a date includes that whole day.")
    consumer = forms.CharField(required=False)
    format = forms.ChoiceField(choices=[(f, f.upper()) for f in FORMATS])

    def clean(self):
        data = super().clean()
        for name in ("since", "until"):
            if data.get(name):
                try:
                    data[name] = parse_moment(data[name], end=name == "until")
                except ValueError as exc:
                    self.add_error(name, str(exc))
        if not self.errors and data["until"] <= data["since"]:
            self.add_error("until", "'until' must be after 'since'.")
        return data


@admin.register(AuditEvent)
class AuditEventAdmin(ReadOnlyAdmin):
    list_display = ("time", "request_id", "consumer_name", "key_prefix", "route", "provider", "endpoint",
                    "status", "error_class", "prompt_tokens", "completion_tokens", "cache_read_tokens",
                    "cache_write_tokens", "reasoning_tokens", "cost_display", "latency_ms")
    # usage_source and format list their choices; a filter on `lane` would list its values with one
    # more SELECT DISTINCT over the table on every page.
    list_filter = ("status", "endpoint", "error_class", "provider", "body_mode", "usage_source", "format", "time")
    search_fields = ("=request_id", "=consumer_name", "=key_prefix", "=route")
    date_hierarchy = "time"
    show_full_result_count = False  # COUNT(*) over millions of rows on every page is not worth it
    list_per_page = 100
    actions = ["export_csv", "export_jsonl"]
    change_list_template = "admin/audit/auditevent/change_list.html"

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in self.model._meta.fields]

    @admin.display(description="cost (USD)", ordering="cost_micros")
    def cost_display(self, event: AuditEvent) -> str:
        return f"{event.cost_micros / 1_000_000:.6f}"

    @admin.display(description="latency (ms)", ordering="latency_us")
    def latency_ms(self, event: AuditEvent) -> str:
        return f"{event.latency_us / 1000:.1f}"

    def get_actions(self, request):
        actions = super().get_actions(request)
        if not request.user.has_perm("audit.export_auditevent"):
            actions.pop("export_csv", None)
            actions.pop("export_jsonl", None)
        return actions

    def _export(self, request, queryset, fmt: str) -> HttpResponseBase:
        if not request.user.has_perm("audit.export_auditevent"):
            raise PermissionDenied
        return export_response(request, queryset.order_by("time", "seq"), fmt, f"audit-selection.{fmt}")

    @admin.action(description="Export selected events as CSV")
    def export_csv(self, request, queryset):
        return self._export(request, queryset, "csv")

    @admin.action(description="Export selected events as JSONL")
    def export_jsonl(self, request, queryset):
        return self._export(request, queryset, "jsonl")

    def get_urls(self):
        urls = super().get_urls()
        export = path("export/", self.admin_site.admin_view(self.export_view), name="audit_auditevent_export")
        return [export, *urls]

    def export_view(self, request: HttpRequest) -> HttpResponseBase:
        """A date range (optionally one consumer) as a CSV or JSONL download."""
        if not (request.user.has_perm("audit.export_auditevent") and is_audit_reader(request.user)):
            raise PermissionDenied
        form = ExportForm(request.GET or None)
        if form.is_bound and form.is_valid():
            data = form.cleaned_data
            consumer = data.get("consumer") or None
            events = events_in_range(since=data["since"], until=data["until"], consumer=consumer)
            return export_response(request, events, data["format"],
                                   export_filename(data["format"], data["since"], data["until"], consumer))
        context = {
            **self.admin_site.each_context(request),
            "title": "Export audit events",
            "form": form,
            "opts": self.model._meta,
            "changelist_url": reverse("admin:audit_auditevent_changelist"),
        }
        return TemplateResponse(request, "admin/audit/auditevent/export.html", context)


@admin.register(AuditExport)
class AuditExportAdmin(ReadOnlyAdmin):
    list_display = ("day", "format", "rows", "sha256", "path", "created_at")
    date_hierarchy = "day"


@admin.register(AuditSinkCursor)
class AuditSinkCursorAdmin(ReadOnlyAdmin):
    list_display = ("name", "lane", "last_seq", "delivered", "last_error", "updated_at")



@admin.register(LogEntry)
class LogEntryAdmin(ReadOnlyAdmin):
    """Django's admin log (who changed what in the admin), read-only for gateway-admin and compliance."""

    list_display = ("action_time", "user", "content_type", "object_repr", "action_flag", "change_message")
    list_filter = ("action_flag", "content_type", "action_time")
    search_fields = ("object_repr", "change_message", "user__username")
    list_select_related = ("user", "content_type")
    date_hierarchy = "action_time"

    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return is_audit_reader(request.user) or super().has_view_permission(request, obj)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return is_audit_reader(request.user) or super().has_module_permission(request)
