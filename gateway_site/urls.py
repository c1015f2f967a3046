from django.contrib import admin
from django.urls import include, path, re_path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView

from gateway_site import admin_health, auth_oidc, dashboard, health, metrics
from proxy import views as proxy_views
from proxy.recording import recorded_view

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("metrics", metrics.metrics_view),
    path("v1/chat/completions", proxy_views.chat_completions),
    path("v1/messages", proxy_views.messages),
    path("v1/messages/count_tokens", recorded_view("messages.count_tokens")(proxy_views.messages_count_tokens)),
    # Views outside the pipeline are audited from here (the pipeline records its own).
    path("v1/models", recorded_view("models.list")(proxy_views.models_list)),
    path("v1/models/<path:model>", recorded_view("models.retrieve")(proxy_views.model_detail)),
    re_path(r"^v1/(?P<rest>.*)$", recorded_view("unknown")(proxy_views.not_found)),
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
