"""The admin REST API under /api/admin/ (issue #6 registers its viewsets on the same router)."""
from __future__ import annotations

from rest_framework.routers import DefaultRouter

from audit.api import AuditEventViewSet

router = DefaultRouter()
# Accept every path with or without its trailing slash (`/api/admin/audit-events/export?...`).
router.trailing_slash = "/?"
router.register("audit-events", AuditEventViewSet, basename="audit-event")

urlpatterns = router.urls
