"""The proxy's routes: every /v1/ path, included by the site's root URLconf.

The site's ASGI entry point resolves these paths without middleware (its lean
handler uses the same ROOT_URLCONF), so a route added here is served lean as long
as its path starts with one of the entry point's LEAN_PATH_PREFIXES.
"""
from __future__ import annotations

from django.urls import path, re_path

from proxy import views

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("v1/messages", views.messages),
    path("v1/messages/count_tokens", views.messages_count_tokens),
    path("v1/models", views.models_list),
    path("v1/models/<path:model>", views.model_detail),
    # Last: any other /v1/ path is answered (after authentication) with a 404 in the caller's shape.
    re_path(r"^v1/(?P<rest>.*)$", views.not_found),
]
