"""The proxy's routes: every /v1/ and /v1beta/ path, included by the site's root URLconf.

The site's ASGI entry point resolves these paths without middleware (its lean
handler uses the same ROOT_URLCONF), so a route added here is served lean as long
as its path starts with one of the entry point's LEAN_PATH_PREFIXES.
"""
from __future__ import annotations

from django.urls import path, re_path

from proxy import views

# Gemini's model methods: models/{model}:{method}. The model may hold ':' or '/', the method never does.
_GEMINI_METHOD = (r"models/(?P<model>.+):(?P<method>generateContent|streamGenerateContent|countTokens|embedContent"
                  r"|batchEmbedContents)$")

urlpatterns = [
    path("v1/chat/completions", views.chat_completions),
    path("v1/responses", views.responses),
    path("v1/messages", views.messages),
    path("v1/messages/count_tokens", views.messages_count_tokens),
    path("v1/embeddings", views.embeddings),
    path("v1/models", views.models_list),
    # Before the model detail: google-genai with api_version v1 calls /v1/models/{model}:generateContent.
    re_path(r"^v1/" + _GEMINI_METHOD, views.gemini_model_method),
    path("v1/models/<path:model>", views.model_detail),
    # Last: any other /v1/ path is answered (after authentication) with a 404 in the caller's shape.
    re_path(r"^v1/(?P<rest>.*)$", views.not_found),
    # Gemini's API as Google serves it (the google-genai SDK and Gemini CLI default to /v1beta).
    re_path(r"^v1beta/" + _GEMINI_METHOD, views.gemini_model_method),
    path("v1beta/models", views.gemini_models_list),
    path("v1beta/models/<path:model>", views.gemini_model_detail),
    re_path(r"^v1beta/(?P<rest>.*)$", views.not_found),
]
