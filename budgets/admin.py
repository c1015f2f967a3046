"""Teams, consumers, keys, budgets and rate limits in the admin (docs/admin.md).

Keys are issued, rotated and revoked only through budgets.keys, the same
functions the admin API calls; every admin action writes Django's admin log.
"""
from __future__ import annotations

from datetime import timedelta

from django import forms
from django.contrib import admin, messages
from django.contrib.admin.helpers import ACTION_CHECKBOX_NAME
from django.db.models import Count, Prefetch
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils import timezone
from django.utils.html import format_html, format_html_join

from audit.permissions import is_audit_reader
from budgets.binding import MAX_ENTRIES
from budgets.keys import IssuedKey, key_issue, key_revoke, key_rotate
from budgets.models import (
    ApiKey,
    Budget,
    BudgetHistory,
    BudgetUsage,
    Consumer,
    ModelPrice,
    RateLimit,
    Team,
    format_amount,
)
from budgets.selectors import budget_usage_report


def usage_bar(*, label: str, used: int, limit: int, metric: str) -> str:
    """One budget as a small horizontal bar: green, orange from 80 %, red at the limit."""
    share = used / limit if limit else 1.0
    percent = min(100, round(share * 100))
    colour = "#2e7d32" if share < 0.8 else "#ef6c00" if share < 1 else "#c62828"
    return format_html(
        '<div class="tg-usage" title="{label}: {used} of {limit}">'
        '<span class="tg-usage-track"><span class="tg-usage-fill" style="width:{percent}%;background:{colour}">'
        "</span></span> {label} {used} / {limit}</div>",
        label=label, used=format_amount(metric, used), limit=format_amount(metric, limit),
        percent=percent, colour=colour,
    )


class LinesField(forms.Field):
    """A list of strings, edited one per line (commas separate too); the model validates the entries."""

    widget = forms.Textarea(attrs={"rows": 3, "cols": 48})

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, list | tuple) else value

    def to_python(self, value) -> list[str]:
        if isinstance(value, list):
            return value
        entries = [part.strip() for line in (value or "").splitlines() for part in line.split(",")]
        entries = [entry for entry in entries if entry]
        if len(entries) > MAX_ENTRIES:
            raise forms.ValidationError(f"At most {MAX_ENTRIES} entries.")
        return entries


# Who may use a key (budgets.binding), on the consumer and on each key.
BINDING_FIELDS = ("allowed_networks", "allowed_user_agents")
# JSON lists of strings, edited one per line: those and a budget's routes.
LINES_FIELDS = (*BINDING_FIELDS, "routes")


class BindingFieldsMixin:
    def formfield_for_dbfield(self, db_field, request, **kwargs):
        if db_field.name in LINES_FIELDS:
            return LinesField(required=False, label=db_field.verbose_name.capitalize(),
                              help_text=f"{db_field.help_text} One per line.")
        return super().formfield_for_dbfield(db_field, request, **kwargs)  # type: ignore[misc]


class ApiKeyInline(admin.TabularInline):
    model = ApiKey
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("prefix", "name", "status", "created_at", "expires_at", "last_used_at")
    readonly_fields = fields

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        # Keys are issued by the "Issue key" button (the API key add page), which shows the plaintext once.
        return False


class BudgetInline(BindingFieldsMixin, admin.TabularInline):
    model = Budget
    fk_name = "consumer"
    extra = 0
    fields = ("metric", "limit", "period", "timezone", "mode", "routes", "alert_at_percent", "alert_email",
              "alert_webhook", "enabled")


class TeamBudgetInline(BudgetInline):
    fk_name = "team"


class MemberInline(admin.TabularInline):
    """A team's consumers; a consumer joins or leaves a team on its own page."""

    model = Consumer
    fk_name = "team"
    extra = 0
    can_delete = False
    show_change_link = True
    fields = ("name", "active", "description")
    readonly_fields = fields
    verbose_name = "member"
    verbose_name_plural = "members (join or leave on the consumer's page)"

    def has_add_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


class RateLimitInline(admin.TabularInline):
    model = RateLimit
    fk_name = "consumer"
    extra = 0
    fields = ("requests", "tokens", "window_seconds", "rejected_code", "rejected_msg", "enabled")


def _audit_reader_only(request: HttpRequest) -> bool:
    """Compliance: may read each consumer's audit body mode (an audit setting), nothing else of budgets."""
    return not request.user.has_perm("budgets.view_consumer") and is_audit_reader(request.user)


def budget_usage_html(rows) -> str:
    if not rows:
        return "No budgets."
    return format_html_join(
        "\n", "{} <div class='help'>{}, {}, {} from {}{}: {} reserved, {} left; resets {}</div>",
        ((usage_bar(label=f"{r.owner} {r.metric}", used=r.used, limit=r.limit, metric=r.metric),
          r.mode, r.period, r.timezone, r.period_start, f", routes {', '.join(r.routes)}" if r.routes else "",
          format_amount(r.metric, r.reserved), format_amount(r.metric, r.remaining), r.resets_at) for r in rows),
    )


@admin.register(Team)
class TeamAdmin(admin.ModelAdmin):
    """Consumers that share budgets: each member's requests also hold the team's (docs/budgets.md#teams)."""

    list_display = ("name", "active", "member_count", "budget_count", "created_at")
    list_filter = ("active",)
    search_fields = ("name",)
    inlines = [MemberInline, TeamBudgetInline]
    readonly_fields = ("created_at", "current_usage")

    def get_queryset(self, request: HttpRequest):
        return super().get_queryset(request).annotate(_member_count=Count("consumers", distinct=True),
                                                      _budget_count=Count("budgets", distinct=True))

    @admin.display(description="members", ordering="_member_count")
    def member_count(self, obj: Team) -> int:
        return obj._member_count  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description="budgets", ordering="_budget_count")
    def budget_count(self, obj: Team) -> int:
        return obj._budget_count  # type: ignore[attr-defined]  # annotated by get_queryset

    @admin.display(description="usage this period")
    def current_usage(self, obj: Team) -> str:
        return "-" if obj.pk is None else budget_usage_html(budget_usage_report(team=obj))


@admin.register(Consumer)
class ConsumerAdmin(BindingFieldsMixin, admin.ModelAdmin):
    list_display = ("name", "active", "team", "audit_body_mode", "key_count", "budget_usage", "created_at")
    list_filter = ("active", "team", "audit_body_mode")
    list_select_related = ("team",)
    search_fields = ("name", "description", "team__name")
    autocomplete_fields = ("team",)
    inlines = [ApiKeyInline, BudgetInline, RateLimitInline]
    readonly_fields = ("current_usage",)
    list_per_page = 50
    change_form_template = "admin/budgets/consumer/change_form.html"

    # The audit body mode lives on the consumer; compliance reads it here, read-only
    # (no permission is granted, so the admin API still refuses them consumers).
    def has_view_permission(self, request: HttpRequest, obj=None) -> bool:
        return super().has_view_permission(request, obj) or is_audit_reader(request.user)

    def has_module_permission(self, request: HttpRequest) -> bool:
        return super().has_module_permission(request) or is_audit_reader(request.user)

    def get_fields(self, request: HttpRequest, obj: Consumer | None = None):
        if _audit_reader_only(request):
            return ("name", "active", "audit_body_mode")
        return super().get_fields(request, obj)

    def get_inlines(self, request: HttpRequest, obj: Consumer | None):
        return [] if _audit_reader_only(request) else super().get_inlines(request, obj)

    def get_list_display(self, request: HttpRequest):
        if _audit_reader_only(request):
            return ("name", "active", "audit_body_mode")
        return super().get_list_display(request)

    @admin.display(description="usage this period (its keys' and its team's budgets too)")
    def current_usage(self, obj: Consumer) -> str:
        return "-" if obj.pk is None else budget_usage_html(budget_usage_report(consumer=obj))

    def get_queryset(self, request: HttpRequest):
        consumers = super().get_queryset(request).annotate(_key_count=Count("keys", distinct=True))
        match = getattr(request, "resolver_match", None)
        if match is not None and (match.url_name or "").endswith("changelist"):
            # Current windows only (ends_at is indexed): three queries for the whole page, whatever its size.
            now = timezone.now()
            current = BudgetUsage.objects.filter(starts_at__lte=now, ends_at__gt=now)
            budgets = (Budget.objects.filter(enabled=True).order_by("id")
                       .prefetch_related(Prefetch("usages", queryset=current, to_attr="current_usages")))
            consumers = consumers.prefetch_related(Prefetch("budgets", queryset=budgets, to_attr="list_budgets"))
        return consumers

    @admin.display(description="keys", ordering="_key_count")
    def key_count(self, obj: Consumer) -> int:
        return obj._key_count  # type: ignore[attr-defined]  # annotated by get_queryset, unknown to the model

    @admin.display(description="budgets (current period, database copy)")
    def budget_usage(self, obj: Consumer) -> str:
        budgets = getattr(obj, "list_budgets", None)
        if not budgets:
            return "-"
        return format_html_join("", "{}", (
            (usage_bar(label=f"{b.metric}/{b.period}", metric=b.metric, limit=b.limit,
                       used=sum(u.used for u in b.current_usages)),) for b in budgets))


class StatusFilter(admin.SimpleListFilter):
    title = "status"
    parameter_name = "status"

    def lookups(self, request, model_admin):
        return [("active", "active"), ("expired", "expired"), ("revoked", "revoked")]

    def queryset(self, request, queryset):
        now = timezone.now()
        if self.value() == "revoked":
            return queryset.filter(revoked_at__isnull=False)
        if self.value() == "expired":
            return queryset.filter(revoked_at__isnull=True, expires_at__lte=now)
        if self.value() == "active":
            return queryset.filter(revoked_at__isnull=True).exclude(expires_at__lte=now)
        return queryset


class RotateForm(forms.Form):
    grace_hours = forms.DecimalField(
        min_value=0, max_value=24 * 365, initial=24, decimal_places=2,
        help_text="How long the old key keeps working (0: it stops at once).")


class ExpiryForm(forms.Form):
    expires_at = forms.DateTimeField(required=False, help_text="YYYY-MM-DD HH:MM (UTC); empty: never expires.",
                                     widget=forms.DateTimeInput(attrs={"placeholder": "2030-01-31 00:00"}))


def _issued_response(model_admin: admin.ModelAdmin, request: HttpRequest, issued: list[IssuedKey],
                     title: str) -> HttpResponse:
    context = {
        **model_admin.admin_site.each_context(request),
        "title": title,
        "opts": model_admin.opts,
        "issued": issued,
        # The single-key page keeps its old names.
        "key": issued[0].key if issued else None,
        "plaintext": issued[0].plaintext if issued else None,
    }
    response = TemplateResponse(request, "admin/budgets/apikey/issued.html", context)
    # The page holds secrets: never cache it anywhere.
    response["Cache-Control"] = "no-store"
    return response


@admin.register(ApiKey)
class ApiKeyAdmin(BindingFieldsMixin, admin.ModelAdmin):
    list_display = ("prefix", "consumer", "name", "status_badge", "created_at", "expires_at", "last_used_at")
    list_filter = (StatusFilter, "created_at", "last_used_at")
    list_select_related = ("consumer",)
    search_fields = ("=prefix", "name", "consumer__name")
    autocomplete_fields = ("consumer",)
    actions = ["revoke_keys", "rotate_keys", "set_expiry"]
    list_per_page = 100

    @admin.display(description="status")
    def status_badge(self, obj: ApiKey) -> str:
        status = obj.status
        colour = {"active": "#2e7d32", "expired": "#757575", "revoked": "#c62828"}[status]
        return format_html('<strong style="color:{}">{}</strong>', colour, status)

    def get_fields(self, request: HttpRequest, obj: ApiKey | None = None):
        if obj is None:
            return ("consumer", "name", "expires_at", "allowed_routes", *BINDING_FIELDS)
        return ("consumer", "prefix", "name", "status", "created_at", "expires_at", "revoked_at",
                "last_used_at", "allowed_routes", *BINDING_FIELDS)

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
            allowed_networks=obj.allowed_networks,
            allowed_user_agents=obj.allowed_user_agents,
        )
        obj.pk = issued.key.pk
        obj.prefix = issued.key.prefix
        obj.digest = issued.key.digest
        obj.created_at = issued.key.created_at
        # Kept on the request only, to be shown once by response_add.
        request._tollgate_issued_key = issued  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiKey, post_url_continue=None) -> HttpResponse:
        issued = getattr(request, "_tollgate_issued_key", None)
        if issued is None:
            return super().response_add(request, obj, post_url_continue)
        return _issued_response(self, request, [issued], "API key issued")

    @admin.action(description="Revoke selected keys", permissions=["change"])
    def revoke_keys(self, request: HttpRequest, queryset) -> None:
        count = 0
        for key in queryset.select_related("consumer"):
            if key.revoked_at is None:
                key_revoke(key=key)
                self.log_change(request, key, "Revoked.")
                count += 1
        self.message_user(request, f"Revoked {count} key(s).", messages.SUCCESS)

    def _action_form(self, request: HttpRequest, queryset, form, action: str, title: str, button: str):
        context = {
            **self.admin_site.each_context(request),
            "title": title,
            "opts": self.opts,
            "form": form,
            "keys": queryset,
            "action": action,
            "button": button,
            "action_checkbox_name": ACTION_CHECKBOX_NAME,
        }
        return TemplateResponse(request, "admin/budgets/apikey/action_form.html", context)

    @admin.action(description="Rotate selected keys (new key, old one valid for a grace period)",
                  permissions=["change"])
    def rotate_keys(self, request: HttpRequest, queryset):
        form = RotateForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            return self._action_form(request, queryset, form, "rotate_keys", "Rotate keys", "Rotate")
        grace = int(form.cleaned_data["grace_hours"] * 3600)
        issued: list[IssuedKey] = []
        for key in queryset.select_related("consumer"):
            if key.revoked_at is not None:
                self.message_user(request, f"{key.prefix}… is revoked: not rotated.", messages.WARNING)
                continue
            new = key_rotate(key=key, grace_seconds=grace)
            key.refresh_from_db(fields=["expires_at"])
            self.log_change(request, key, f"Rotated: replaced by {new.key.prefix}…, expires {key.expires_at}.")
            self.log_addition(request, new.key, f"Issued by rotating {key.prefix}….")
            issued.append(new)
        if not issued:
            return None
        return _issued_response(self, request, issued, "API keys rotated")

    @admin.action(description="Set expiry of selected keys", permissions=["change"])
    def set_expiry(self, request: HttpRequest, queryset):
        form = ExpiryForm(request.POST if "apply" in request.POST else None)
        if not form.is_valid():
            form.initial.setdefault("expires_at", (timezone.now() + timedelta(days=90)).replace(microsecond=0))
            return self._action_form(request, queryset, form, "set_expiry", "Set key expiry", "Set expiry")
        expires_at = form.cleaned_data["expires_at"]
        count = 0
        for key in queryset.select_related("consumer"):
            key.expires_at = expires_at
            key.save(update_fields=["expires_at"])  # post_save invalidates the key caches
            self.log_change(request, key, f"Expiry set to {expires_at or 'never'}.")
            count += 1
        self.message_user(request, f"Set the expiry of {count} key(s).", messages.SUCCESS)
        return None


@admin.register(Budget)
class BudgetAdmin(BindingFieldsMixin, admin.ModelAdmin):
    """A budget belongs to exactly one of a team, a consumer or a key; `routes` scopes it."""

    list_display = ("__str__", "team", "consumer", "key", "metric", "limit", "period", "routes_display", "mode",
                    "enabled")
    list_filter = ("metric", "period", "mode", "enabled", "team")
    list_select_related = ("team", "consumer", "key__consumer")
    search_fields = ("team__name", "consumer__name", "key__prefix")
    autocomplete_fields = ("team", "consumer")
    raw_id_fields = ("key",)

    @admin.display(description="routes")
    def routes_display(self, obj: Budget) -> str:
        return ", ".join(obj.routes) if obj.routes else "every route"


@admin.register(RateLimit)
class RateLimitAdmin(admin.ModelAdmin):
    list_display = ("__str__", "consumer", "key", "rejected_code", "enabled")
    list_select_related = ("consumer", "key__consumer")
    search_fields = ("consumer__name", "key__prefix")
    autocomplete_fields = ("consumer",)
    raw_id_fields = ("key",)


@admin.register(BudgetHistory)
class BudgetHistoryAdmin(admin.ModelAdmin):
    list_display = ("budget", "period_start", "metric", "limit", "used", "closed_at")
    list_filter = ("metric",)
    list_select_related = ("budget__team", "budget__consumer", "budget__key")

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj=None) -> bool:
        return False


def _usd(micro: int | None) -> str:
    return "—" if micro is None else f"{micro / 1_000_000:g}"


@admin.register(ModelPrice)
class ModelPriceAdmin(admin.ModelAdmin):
    """Every token class of a price, in micro-dollars per million tokens ($1 = 1,000,000).

    A changed price is best entered as a new row with a later `valid_from`, so past
    requests keep the price they were charged at (gateway_apply does that itself).
    """

    list_display = ("model", "provider", "input_usd", "cached_input_usd", "cache_write_usd", "output_usd",
                    "valid_from", "source")
    list_filter = ("provider",)
    search_fields = ("model", "provider", "source", "note")
    date_hierarchy = "valid_from"
    fieldsets = (
        (None, {"fields": ("model", "provider", "valid_from")}),
        ("Prices in micro-dollars per million tokens ($1 = 1,000,000; empty: see each field)", {"fields": (
            "input_per_million", "cached_input_per_million", "cache_write_per_million",
            "cache_write_1h_per_million", "output_per_million", "reasoning_output_per_million",
        )}),
        ("Where the price comes from", {"fields": ("source", "note")}),
    )

    @admin.display(description="input $ / M tokens", ordering="input_per_million")
    def input_usd(self, obj: ModelPrice) -> str:
        return _usd(obj.input_per_million)

    @admin.display(description="cached input $ / M", ordering="cached_input_per_million")
    def cached_input_usd(self, obj: ModelPrice) -> str:
        return _usd(obj.cached_input_per_million)

    @admin.display(description="cache write $ / M (5 min / 1 h)")
    def cache_write_usd(self, obj: ModelPrice) -> str:
        if obj.cache_write_per_million is None and obj.cache_write_1h_per_million is None:
            return "—"
        return f"{_usd(obj.cache_write_per_million)} / {_usd(obj.cache_write_1h_per_million)}"

    @admin.display(description="output $ / M tokens", ordering="output_per_million")
    def output_usd(self, obj: ModelPrice) -> str:
        return _usd(obj.output_per_million)
