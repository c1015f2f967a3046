from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html_join

from budgets.models import ApiKey, Budget, BudgetHistory, Consumer, ModelPrice, RateLimit, format_amount
from budgets.selectors import budget_usage_report
from budgets.services import key_issue, key_revoke


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("prefix", "name", "status", "created_at", "expires_at", "last_used_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        # Keys are issued on the API key page, which shows the plaintext once.
        return False


class BudgetInline(admin.TabularInline):
    model = Budget
    fk_name = "consumer"
    extra = 0
    fields = ("metric", "limit", "period", "timezone", "mode", "alert_at_percent", "alert_email",
              "alert_webhook", "enabled")


class RateLimitInline(admin.TabularInline):
    model = RateLimit
    fk_name = "consumer"
    extra = 0
    fields = ("requests", "tokens", "window_seconds", "rejected_code", "rejected_msg", "enabled")


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("name", "active", "key_count", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "description")
    inlines = [ApiKeyInline, BudgetInline, RateLimitInline]
    readonly_fields = ("current_usage",)

    @admin.display(description="usage this period")
    def current_usage(self, obj: Consumer) -> str:
        if obj.pk is None:
            return "-"
        rows = budget_usage_report(consumer=obj)
        if not rows:
            return "No budgets."
        return format_html_join(
            "\n", "<div>{} {} ({}, {} from {}): {} used, {} reserved, {} left of {}</div>",
            ((r.owner, r.metric, r.mode, r.period, r.period_start, format_amount(r.metric, r.used),
              format_amount(r.metric, r.reserved), format_amount(r.metric, r.remaining),
              format_amount(r.metric, r.limit)) for r in rows),
        )

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(_key_count=Count("keys"))

    @admin.display(description="keys", ordering="_key_count")
    def key_count(self, obj: Consumer) -> int:
        return obj._key_count


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("prefix", "consumer", "name", "status", "created_at", "expires_at", "last_used_at")
    list_filter = ("consumer",)
    list_select_related = ("consumer",)
    search_fields = ("prefix", "name", "consumer__name")
    actions = ["revoke_keys"]

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ("consumer", "name", "expires_at", "allowed_routes")
        return ("consumer", "prefix", "name", "status", "created_at", "expires_at", "revoked_at",
                "last_used_at", "allowed_routes")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ()
        return ("consumer", "prefix", "status", "created_at", "revoked_at", "last_used_at")

    def save_model(self, request: HttpRequest, obj: ApiKey, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = key_issue(
            consumer=obj.consumer,
            name=obj.name,
            expires_at=obj.expires_at,
            allowed_routes=obj.allowed_routes,
        )
        obj.pk = issued.key.pk
        obj.prefix = issued.key.prefix
        obj.digest = issued.key.digest
        obj.created_at = issued.key.created_at
        # Kept on the request only, to be shown once by response_add.
        request._tollgate_issued_key = issued.plaintext  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        plaintext = getattr(request, "_tollgate_issued_key", None)
        if plaintext is None:
            return super().response_add(request, obj, post_url_continue)
        context = {
            **self.admin_site.each_context(request),
            "title": "API key issued",
            "opts": self.opts,
            "key": obj,
            "plaintext": plaintext,
        }
        response = TemplateResponse(request, "admin/budgets/apikey/issued.html", context)
        # The page holds a secret: never cache it anywhere.
        response["Cache-Control"] = "no-store"
        return response

    @admin.action(description="Revoke selected keys")
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        count = 0
        for key in queryset:
            if key.revoked_at is None:
                key_revoke(key=key)
                count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)


@admin.register(Budget)
class BudgetAdmin(admin.ModelAdmin):
    list_display = ("__str__", "consumer", "key", "metric", "limit", "period", "timezone", "mode", "enabled")
    list_filter = ("metric", "period", "mode", "enabled")
    list_select_related = ("consumer", "key")
    raw_id_fields = ("key",)


@admin.register(RateLimit)
class RateLimitAdmin(admin.ModelAdmin):
    list_display = ("__str__", "consumer", "key", "rejected_code", "enabled")
    list_select_related = ("consumer", "key")
    raw_id_fields = ("key",)


@admin.register(BudgetHistory)
class BudgetHistoryAdmin(admin.ModelAdmin):
    list_display = ("budget", "period_start", "metric", "limit", "used", "closed_at")
    list_filter = ("metric",)
    list_select_related = ("budget__consumer", "budget__key")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    list_display = ("model", "input_usd", "output_usd", "valid_from", "note")
    search_fields = ("model",)
    date_hierarchy = "valid_from"

    @admin.display(description="input $ / M tokens", ordering="input_per_million")
    def input_usd(self, obj: ModelPrice) -> str:
        return f"{obj.input_per_million / 1_000_000:g}"

    @admin.display(description="output $ / M tokens", ordering="output_per_million")
    def output_usd(self, obj: ModelPrice) -> str:
        return f"{obj.output_per_million / 1_000_000:g}"
