from __future__ import annotations

import datetime

from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.utils import timezone

from proxy import breaker
from proxy.credentials import (
    CREDENTIAL_FIELDS,
    PERMISSION_REFUSED,
    credential_change_record,
    credential_changes,
    credentials_may_change,
)
from proxy.models import Deployment, ModelRoute, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base_url", "credential_source", "enabled", "last_check_at", "last_check_ok")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "base_url")
    readonly_fields = ("last_check_at", "last_check_ok", "last_check_error")

    # Where the credential comes from and where it goes: for superusers and the gateway-credentials
    # group only (proxy.credentials); others see these fields read-only and cannot add providers.
    def has_add_permission(self, request) -> bool:
        return super().has_add_permission(request) and credentials_may_change(request.user)

    def get_readonly_fields(self, request, obj: Provider | None = None):
        fields = tuple(super().get_readonly_fields(request, obj))
        return fields if credentials_may_change(request.user) else (*CREDENTIAL_FIELDS, *fields)

    def save_model(self, request, obj: Provider, form, change: bool) -> None:
        before = Provider.objects.filter(pk=obj.pk).values(*CREDENTIAL_FIELDS).first() if change else None
        changes = credential_changes(before, {f: getattr(obj, f) for f in CREDENTIAL_FIELDS})
        if (changes or not change) and not credentials_may_change(request.user):
            raise PermissionDenied(PERMISSION_REFUSED)  # the form hides them; a forged POST ends here
        super().save_model(request, obj, form, change)
        credential_change_record(provider=obj, changes=changes, created=not change, via="admin", user=request.user)

    @admin.display(description="credential")
    def credential_source(self, obj: Provider) -> str:
        # Where the key comes from, never the key.
        if obj.api_key_env:
            return f"env {obj.api_key_env}"
        if obj.api_key_file:
            return f"file {obj.api_key_file}"
        return "none"


class DeploymentInline(admin.TabularInline):
    model = Deployment
    extra = 1
    fields = ("provider", "upstream_model", "weight", "priority", "enabled", "state")
    readonly_fields = ("state",)
    autocomplete_fields = ("provider",)

    @admin.display(description="breaker")
    def state(self, obj: Deployment) -> str:
        return _state(obj) if obj.pk else "-"


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    list_display = ("model", "enabled", "max_retries", "retry_budget_seconds", "allow_pin_fallback", "description")
    list_filter = ("enabled",)
    search_fields = ("model", "description")
    inlines = [DeploymentInline]


def _state(obj: Deployment) -> str:
    state = breaker.state_now(obj.pk)
    if state == "open":
        return f"open ({breaker.open_remaining(obj.pk):.0f}s left)"
    return state.replace("_", "-")


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("route", "provider", "upstream_model", "weight", "priority", "enabled", "state",
                    "latest_error", "last_check")
    list_filter = ("provider", "enabled")
    list_select_related = ("route", "provider")
    search_fields = ("route__model", "upstream_model", "provider__name")
    readonly_fields = ("state", "latest_error", "last_check")
    actions = ["close_breakers"]

    @admin.display(description="breaker")
    def state(self, obj: Deployment) -> str:
        return _state(obj)

    @admin.display(description="last error")
    def latest_error(self, obj: Deployment) -> str:
        when: datetime.datetime | None
        # The shared cache has the newest; the row keeps one that outlives the cache.
        cached = breaker.last_error(obj.pk)
        if cached is not None:
            message, at = cached
            when = datetime.datetime.fromtimestamp(at, tz=datetime.UTC)
        elif obj.last_error:
            message, when = obj.last_error, obj.last_error_at
        else:
            return "-"
        return f"{timezone.localtime(when):%Y-%m-%d %H:%M:%S} {message}" if when else message

    @admin.display(description="last check")
    def last_check(self, obj: Deployment) -> str:
        provider = obj.provider
        if provider.last_check_at is None:
            return "never"
        result = "ok" if provider.last_check_ok else (provider.last_check_error or "failed")
        return f"{timezone.localtime(provider.last_check_at):%Y-%m-%d %H:%M:%S} {result}"

    @admin.action(description="Close the circuit breaker of the selected deployments")
    def close_breakers(self, request, queryset) -> None:
        for deployment in queryset:
            breaker.reset(deployment.pk)
        self.message_user(request, f"Closed {queryset.count()} breaker(s).", messages.SUCCESS)
