from django.contrib import admin
from django.urls import path, re_path

from gateway_site import health
from proxy import views as proxy_views

urlpatterns = [
    path("healthz", health.healthz),
    path("readyz", health.readyz),
    path("v1/chat/completions", proxy_views.chat_completions),
    path("v1/messages", proxy_views.messages),
    path("v1/messages/count_tokens", proxy_views.messages_count_tokens),
    path("v1/models", proxy_views.models_list),
    path("v1/models/<path:model>", proxy_views.model_detail),
    re_path(r"^v1/(?P<rest>.*)$", proxy_views.not_found),
    path("admin/", admin.site.urls),
]
