from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway_site import admin_health, auth_oidc, dashboard, health, metrics

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view),
    path("", include("proxy.urls")),
    path("api/admin/", include("gateway_site.api_urls")),
    # OpenAPI 3 schema of the admin API and its browsable docs (Swagger UI from drf-spectacular-sidecar).
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("admin/gateway-health/", admin.site.admin_view(admin_health.health_view), name="gateway-health"),
    path("admin/dashboard/", admin.site.admin_view(dashboard.dashboard_view), name="gateway-dashboard"),
    path("admin/", admin.site.urls),
    # Single sign-on to the admin (404 unless TOLLGATE_OIDC_CLIENT_ID is set); the names are the library's.
    path("oidc/authenticate/", auth_oidc.SignInView.as_view(), name="oidc_authentication_init"),
    path("oidc/callback/", auth_oidc.CallbackView.as_view(), name="oidc_authentication_callback"),
]
