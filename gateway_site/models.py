"""The roof's own table: admin API tokens, which belong to people (Django users), not to one app."""
from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone


class ApiToken(models.Model):
    """A token for the admin REST API. Only its SHA-256 digest and a short visible prefix are stored.

    Replaces rest_framework.authtoken's Token, which keeps the token itself in the database
    and never expires (DESIGN §6: secrets are stored as digests).
    """

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100, blank=True, help_text="A label, e.g. 'deploy script'.")
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField()
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    revoked_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["-created_at", "-id"]
        verbose_name = "admin API token"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.user})" if self.user_id else self.prefix

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at <= timezone.now():
            return "expired"
        return "active"
