"""The admin REST API under /api/admin/ (issue #6 registers its viewsets on the same router)."""
from __future__ import annotations

from rest_framework.routers import DefaultRouter

from audit.api import AuditEventViewSet

# trailing_slash="/?": `/api/admin/audit-events/export?...` works with or without the slash.
router = DefaultRouter(trailing_slash="/?")
router.register("audit-events", AuditEventViewSet, basename="audit-event")

urlpatterns = router.urls
