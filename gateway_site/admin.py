"""Admin API tokens in the admin: issue (shown once), rotate, revoke. Superusers only, unless granted."""
from __future__ import annotations

from django import forms
from django.conf import settings
from django.contrib import admin, messages
from django.contrib.auth import get_user_model
from django.http import HttpRequest, HttpResponse
from django.template.response import TemplateResponse
from django.utils.html import format_html

from gateway_site.auth_tokens import IssuedToken, token_issue, token_revoke, token_rotate
from gateway_site.models import ApiToken


class TokenIssueForm(forms.ModelForm):
    days = forms.IntegerField(min_value=1, max_value=3650, required=False,
                              help_text="Days until it expires (empty: TOLLGATE_API_TOKEN_DAYS).")

    class Meta:
        model = ApiToken
        fields = ("user", "name")

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        # The admin API admits staff only: a token for anyone else would never work.
        user_field = self.fields["user"]
        assert isinstance(user_field, forms.ModelChoiceField)
        user_field.queryset = get_user_model().objects.filter(is_staff=True, is_active=True)
        self.fields["days"].initial = settings.TOLLGATE_API_TOKEN_DAYS


def _issued_response(model_admin: admin.ModelAdmin, request: HttpRequest, issued: list[IssuedToken],
                     title: str) -> HttpResponse:
    context = {**model_admin.admin_site.each_context(request), "title": title, "opts": model_admin.opts,
               "issued": issued}
    response = TemplateResponse(request, "admin/gateway_site/apitoken/issued.html", context)
    response["Cache-Control"] = "no-store"  # the page holds secrets
    return response


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "user", "name", "status_badge", "created_at", "expires_at", "last_used_at")
    list_filter = ("created_at", "expires_at", "last_used_at")
    list_select_related = ("user",)
    search_fields = ("=prefix", "name", "user__username")
    actions = ["revoke_tokens", "rotate_tokens"]
    readonly_fields = ("user", "prefix", "status", "created_at", "expires_at", "last_used_at", "revoked_at")

    @admin.display(description="status")
    def status_badge(self, obj: ApiToken) -> str:
        colour = {"active": "#2e7d32", "expired": "#757575", "revoked": "#c62828"}[obj.status]
        return format_html('<strong style="color:{}">{}</strong>', colour, obj.status)

    def get_form(self, request: HttpRequest, obj: ApiToken | None = None, change: bool = False, **kwargs):
        if obj is None:
            kwargs["form"] = TokenIssueForm
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        if obj is None:
            return ("user", "name", "days")
        return ("user", "name", "prefix", "status", "created_at", "expires_at", "last_used_at", "revoked_at")

    def get_readonly_fields(self, request: HttpRequest, obj: ApiToken | None = None):
        return () if obj is None else self.readonly_fields

    def save_model(self, request: HttpRequest, obj: ApiToken, form, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = token_issue(user=obj.user, name=obj.name, days=form.cleaned_data.get("days"))
        obj.pk, obj.prefix, obj.digest = issued.token.pk, issued.token.prefix, issued.token.digest
        obj.created_at, obj.expires_at = issued.token.created_at, issued.token.expires_at
        # Shown once by response_add.
        request._tollgate_issued_token = issued  # type: ignore[attr-defined]

    def response_add(self, request: HttpRequest, obj: ApiToken, post_url_continue=None) -> HttpResponse:
        issued = getattr(request, "_tollgate_issued_token", None)
        if issued is None:
            return super().response_add(request, obj, post_url_continue)
        return _issued_response(self, request, [issued], "Admin API token issued")

    @admin.action(description="Revoke selected tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset) -> None:
        count = 0
        for token in queryset.select_related("user"):
            if token.revoked_at is None:
                token_revoke(token=token)
                self.log_change(request, token, "Revoked.")
                count += 1
        self.message_user(request, f"Revoked {count} token(s).", messages.SUCCESS)

    @admin.action(description="Rotate selected tokens (new token shown once; the old one stops now)",
                  permissions=["add", "change"])
    def rotate_tokens(self, request: HttpRequest, queryset):
        issued: list[IssuedToken] = []
        for token in queryset.select_related("user"):
            if token.revoked_at is not None:
                self.message_user(request, f"{token.prefix}… is revoked: not rotated.", messages.WARNING)
                continue
            new = token_rotate(token=token)
            self.log_change(request, token, f"Rotated: replaced by {new.token.prefix}…, revoked.")
            self.log_addition(request, new.token, f"Issued by rotating {token.prefix}….")
            issued.append(new)
        if not issued:
            return None
        return _issued_response(self, request, issued, "Admin API tokens rotated")
