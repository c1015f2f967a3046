"""Providers, routes and deployments in the admin REST API (docs/admin.md).

A provider names its credential (an environment variable or a file); the API never
reads or returns the credential itself.
"""
from __future__ import annotations

from django.db.models import Prefetch
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import serializers, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from gateway_site.lib.api_errors import ModelPermissions, ModelValidationMixin, query_int
from gateway_site.lib.api_history import AdminHistoryMixin
from proxy import health
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
        return health.state_now(deployment_id)
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
        fields = ["id", "model", "description", "default_max_tokens", "max_retries", "retry_budget_seconds",
                  "failover_statuses", "allow_pin_fallback", "enabled", "deployments", "updated_at"]
        read_only_fields = ["updated_at"]


class ProviderViewSet(AdminHistoryMixin, viewsets.ModelViewSet):
    """Upstream providers. Deleting one that deployments still use is refused (409)."""

    serializer_class = ProviderSerializer
    permission_classes = [ModelPermissions]
    queryset = Provider.objects.order_by("name")

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
