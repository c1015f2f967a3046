"""The admin REST API under /api/admin/ (docs/admin.md)."""
from __future__ import annotations

from rest_framework.routers import DefaultRouter

import gateway_site.api_schema  # noqa: F401 -- registers the audit views' OpenAPI descriptions
from audit.api import AuditEventViewSet, UsageViewSet
from budgets.api import ApiKeyViewSet, BudgetViewSet, ConsumerViewSet, RateLimitViewSet, TeamViewSet
from gateway_site.api_history import AdminHistoryViewSet
from proxy.api import DeploymentViewSet, ModelRouteViewSet, ProviderViewSet

router = DefaultRouter()
# Accept every path with or without its trailing slash (`/api/admin/audit-events/export?...`).
router.trailing_slash = "/?"
router.register("audit-events", AuditEventViewSet, basename="audit-event")
router.register("teams", TeamViewSet, basename="team")
router.register("consumers", ConsumerViewSet, basename="consumer")
router.register("keys", ApiKeyViewSet, basename="key")
router.register("budgets", BudgetViewSet, basename="budget")
router.register("rate-limits", RateLimitViewSet, basename="rate-limit")
router.register("providers", ProviderViewSet, basename="provider")
router.register("routes", ModelRouteViewSet, basename="route")
router.register("deployments", DeploymentViewSet, basename="deployment")
router.register("usage", UsageViewSet, basename="usage")
# Who changed what, in the admin or this API (Django's LogEntry), for compliance beside the audit log.
router.register("history", AdminHistoryViewSet, basename="history")

urlpatterns = router.urls
