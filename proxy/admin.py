from __future__ import annotations

from django.contrib import admin

from proxy.models import Deployment, ModelRoute, Provider


@admin.register(Provider)
class ProviderAdmin(admin.ModelAdmin):
    list_display = ("name", "kind", "base_url", "credential_source", "enabled")
    list_filter = ("kind", "enabled")
    search_fields = ("name", "base_url")

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
    fields = ("provider", "upstream_model", "weight", "priority", "enabled")
    autocomplete_fields = ("provider",)


@admin.register(ModelRoute)
class ModelRouteAdmin(admin.ModelAdmin):
    list_display = ("model", "enabled", "description")
    list_filter = ("enabled",)
    search_fields = ("model", "description")
    inlines = [DeploymentInline]


@admin.register(Deployment)
class DeploymentAdmin(admin.ModelAdmin):
    list_display = ("route", "provider", "upstream_model", "weight", "priority", "enabled")
    list_filter = ("provider", "enabled")
    list_select_related = ("route", "provider")
    search_fields = ("route__model", "upstream_model", "provider__name")
