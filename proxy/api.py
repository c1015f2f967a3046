"""Providers, routes and deployments in the admin REST API (docs/admin.md).

A provider names its credential (an environment variable or a file); the API never
reads or returns the credential itself.
"""
from __future__ import annotations

from collections.abc import Mapping

from django.db import transaction
from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.exceptions import PermissionDenied
from rest_framework.response import Response

from gateway_site.lib.api_errors import ModelPermissions, ModelValidationMixin, query_int
from gateway_site.lib.api_history import AdminHistoryMixin
from proxy import breaker
from proxy.credentials import (
    CREDENTIAL_FIELDS,
    PERMISSION_REFUSED,
    credential_change_record,
    credential_changes,
    credentials_may_change,
)
from proxy.models import Deployment, ModelRoute, Provider


class ProviderSerializer(ModelValidationMixin, serializers.ModelSerializer):
    extra_headers = serializers.DictField(child=serializers.CharField(max_length=2000), required=False,
                                          help_text='Sent upstream with every call, e.g. {"anthropic-version": '
                                          '"2023-06-01"}')

    class Meta:
        model = Provider
        fields = ["id", "name", "kind", "base_url", "api_key_env", "api_key_file", "extra_headers",
                  "timeout_seconds", "connect_timeout_seconds", "enabled", "health_check_interval_seconds",
                  "last_check_at", "last_check_ok", "last_check_error", "updated_at"]
        read_only_fields = ["last_check_at", "last_check_ok", "last_check_error", "updated_at"]


def _breaker(deployment_id: int) -> str:
    try:
        return breaker.state_now(deployment_id)
    except Exception:
        return "unknown"  # the shared cache is down; the breaker state cannot be read


class DeploymentSerializer(ModelValidationMixin, serializers.ModelSerializer):
    breaker = serializers.SerializerMethodField(help_text="closed, open or half_open (the circuit breaker).")

    class Meta:
        model = Deployment
        fields = ["id", "route", "provider", "upstream_model", "weight", "priority", "enabled", "breaker",
                  "last_error", "last_error_at"]
        read_only_fields = ["last_error", "last_error_at"]

    def get_breaker(self, deployment: Deployment) -> str:
        return _breaker(deployment.pk)


class RouteDeploymentSerializer(serializers.ModelSerializer):
    provider = serializers.CharField(source="provider.name", read_only=True)
    breaker = serializers.SerializerMethodField()

    class Meta:
        model = Deployment
        fields = ["id", "provider", "upstream_model", "weight", "priority", "enabled", "breaker"]
        read_only_fields = fields

    def get_breaker(self, deployment: Deployment) -> str:
        return _breaker(deployment.pk)


class ModelRouteSerializer(ModelValidationMixin, serializers.ModelSerializer):
    failover_statuses = serializers.ListField(child=serializers.IntegerField(min_value=400, max_value=599),
                                              required=False, max_length=200)
    deployments = RouteDeploymentSerializer(many=True, read_only=True)

    class Meta:
        model = ModelRoute
        fields = ["id", "model", "description", "default_max_tokens", "max_output_tokens", "max_retries",
                  "retry_budget_seconds", "failover_statuses", "allow_pin_fallback", "allow_store",
                  "allow_price_fields", "enabled", "deployments", "updated_at"]
        read_only_fields = ["updated_at"]


class ProviderViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Upstream providers. Deleting one that deployments still use is refused (409). Creating one, or
    changing base_url, api_key_env or api_key_file, needs a superuser or the change_provider_credentials
    permission (403 otherwise; docs/providers.md#credentials)."""

    serializer_class = ProviderSerializer
    permission_classes = [ModelPermissions]
    queryset = Provider.objects.order_by("name")

    # The permission is checked before the input is validated, so whoever lacks it learns nothing
    # about the rules from a 400; perform_* check it again on the validated values.
    def create(self, request, *args, **kwargs):
        if not credentials_may_change(request.user):
            raise PermissionDenied(PERMISSION_REFUSED)
        return super().create(request, *args, **kwargs)

    def update(self, request, *args, **kwargs):
        provider = self.get_object()
        data = request.data if isinstance(request.data, Mapping) else {}  # a JSON list or string: a 400 below
        asked = {f: data[f] for f in CREDENTIAL_FIELDS if f in data}
        current = {f: getattr(provider, f) for f in asked}
        if credential_changes(current, asked) and not credentials_may_change(request.user):
            raise PermissionDenied(PERMISSION_REFUSED)
        return super().update(request, *args, **kwargs)

    @transaction.atomic
    def perform_create(self, serializer: serializers.BaseSerializer) -> None:
        changes = self._credential_changes(serializer, before=None)
        super().perform_create(serializer)  # saves, and writes the admin history (AdminHistoryMixin)
        credential_change_record(provider=serializer.instance, changes=changes, created=True, via="admin API",
                                 user=self.request.user)

    @transaction.atomic
    def perform_update(self, serializer: serializers.BaseSerializer) -> None:
        before = {f: getattr(serializer.instance, f) for f in CREDENTIAL_FIELDS}
        changes = self._credential_changes(serializer, before=before)
        super().perform_update(serializer)
        credential_change_record(provider=serializer.instance, changes=changes, created=False, via="admin API",
                                 user=self.request.user)

    def _credential_changes(self, serializer: serializers.BaseSerializer, *, before: dict | None) -> dict:
        after = {**(before or {}), **{f: v for f, v in serializer.validated_data.items() if f in CREDENTIAL_FIELDS}}
        changes = credential_changes(before, after)
        if (changes or before is None) and not credentials_may_change(self.request.user):
            raise PermissionDenied(PERMISSION_REFUSED)
        return changes

    @extend_schema(request=None, responses=ProviderSerializer)
    @action(detail=True, methods=["post"])
    def check(self, request, pk=None):
        """Run the health check now (calls the provider's model list; costs no tokens)."""
        from proxy.services import provider_check

        provider = self.get_object()
        provider_check(provider=provider)
        provider.refresh_from_db()
        return Response(ProviderSerializer(provider).data)


class ModelRouteViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Model routes: the names clients send as `model`, with their deployments."""

    serializer_class = ModelRouteSerializer
    permission_classes = [ModelPermissions]
    queryset = ModelRoute.objects.all()

    def get_queryset(self):
        deployments = Deployment.objects.select_related("provider").order_by("priority", "-weight", "id")
        return ModelRoute.objects.order_by("model").prefetch_related(Prefetch("deployments", queryset=deployments))


@extend_schema(parameters=[OpenApiParameter("route", int, description="Only this route's (its id)."),
                           OpenApiParameter("provider", int, description="Only this provider's (its id).")])
class DeploymentViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Deployments: a route served by a provider's model, with a weight and a priority (lower is preferred)."""

    serializer_class = DeploymentSerializer
    permission_classes = [ModelPermissions]
    queryset = Deployment.objects.all()

    def get_queryset(self):
        rows = Deployment.objects.select_related("route", "provider").order_by("route__model", "priority", "id")
        for name in ("route", "provider"):
            value = query_int(self.request, name)
            if value is not None:
                rows = rows.filter(**{f"{name}_id": value})
        return rows
