from __future__ import annotations

from django.contrib import admin, messages
from django.db.models import Count
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse

from budgets.models import ApiKey, Consumer
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


@admin.register(Consumer)
class ConsumerAdmin(admin.ModelAdmin):
    list_display = ("name", "active", "key_count", "created_at")
    list_filter = ("active",)
    search_fields = ("name", "description")
    inlines = [ApiKeyInline]

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
