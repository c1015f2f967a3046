from __future__ import annotations

from django.core.exceptions import ValidationError
from django.core.validators import MinValueValidator, RegexValidator
from django.db import models

from proxy.credentials import (
    ENV_PREFIX,
    PERMISSION_CODENAME,
    credential_read,
    validate_env_reference,
    validate_file_reference,
)

name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,99}$",
    "Use letters, digits and '.', '_', '-', ':', '/' (at most 100 characters).",
)
env_name_validator = RegexValidator(r"^[A-Za-z_][A-Za-z0-9_]*$", "Not an environment variable name.")


class ProviderKind(models.TextChoices):
    OPENAI = "openai", "OpenAI"
    ANTHROPIC = "anthropic", "Anthropic"
    GEMINI = "gemini", "Google Gemini"
    OPENAI_COMPATIBLE = "openai_compatible", "OpenAI-compatible"
    SANDBOX = "sandbox", "Sandbox (built in, no key)"


class Provider(models.Model):
    """An upstream model provider. Its credential is named here, never stored here.

    The name is confined (proxy.credentials): a TOLLGATE_PROVIDER_ variable or a file in
    TOLLGATE_SECRETS_DIR; choosing it, or base_url, needs the change_provider_credentials permission.
    """

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    kind = models.CharField(max_length=32, choices=ProviderKind.choices)
    base_url = models.URLField(
        max_length=500, help_text="As the provider's own SDK takes it, e.g. https://api.openai.com/v1. "
        "The credential is sent here."
    )
    api_key_env = models.CharField(
        max_length=100,
        blank=True,
        validators=[env_name_validator, validate_env_reference],
        help_text=f"Environment variable holding the provider's API key; its name starts with {ENV_PREFIX}.",
    )
    api_key_file = models.CharField(
        max_length=500, blank=True, validators=[validate_file_reference],
        help_text="Or a file holding it (a mounted secret) inside TOLLGATE_SECRETS_DIR; "
        "a relative name is taken in that directory.",
    )
    extra_headers = models.JSONField(
        default=dict, blank=True, help_text='Sent upstream with every call, e.g. {"anthropic-version": "2023-06-01"}'
    )
    timeout_seconds = models.FloatField(default=60.0, validators=[MinValueValidator(0.1)])
    connect_timeout_seconds = models.FloatField(default=5.0, validators=[MinValueValidator(0.1)])
    enabled = models.BooleanField(default=True)
    health_check_interval_seconds = models.PositiveIntegerField(
        default=60, help_text="How often the health check calls the provider's model list (no tokens); 0: never."
    )
    # Written by the health check (proxy.tasks), read by the admin.
    last_check_at = models.DateTimeField(null=True, blank=True, editable=False)
    last_check_ok = models.BooleanField(null=True, editable=False)
    last_check_error = models.TextField(blank=True, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        permissions = [(PERMISSION_CODENAME, "Can change provider credentials (base URL and API key reference)")]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if self.api_key_env and self.api_key_file:
            raise ValidationError("Name the credential by environment variable or by file, not both.")
        if not isinstance(self.extra_headers, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in self.extra_headers.items()
        ):
            raise ValidationError({"extra_headers": "Must map header names to string values."})

    def read_credential(self) -> str:
        """The provider's API key from the environment or the secret file ('' when none is named,
        or when the reference breaks the rules: it is checked again at every read)."""
        return credential_read(provider=self.name, env=self.api_key_env, file=self.api_key_file)


def default_failover_statuses() -> list[int]:
    return [408, 429, 500, 502, 503, 504, 529]


class ModelRoute(models.Model):
    """A public model name (alias or real name) that clients send as `model`."""

    model = models.CharField(max_length=100, unique=True, validators=[name_validator])
    description = models.TextField(blank=True)
    default_max_tokens = models.PositiveIntegerField(
        default=1024,
        validators=[MinValueValidator(1)],
        help_text="Sent upstream as the output bound, and reserved against budgets, when a request gives "
        "no max_tokens (capped by max output tokens).",
    )
    max_output_tokens = models.PositiveIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1)],
        help_text="The most output tokens one answer may have: a request asking for more is sent upstream with "
        "this bound instead (empty: no cap).",
    )
    max_retries = models.PositiveSmallIntegerField(
        default=2, help_text="Further deployments tried after the first one fails (0: no failover)."
    )
    retry_budget_seconds = models.FloatField(
        default=30.0, validators=[MinValueValidator(0)],
        help_text="No new attempt starts once this long has passed since the first one began.",
    )
    failover_statuses = models.JSONField(
        default=default_failover_statuses, blank=True,
        help_text="Provider HTTP statuses that make the gateway try the next deployment. "
        "Connect errors and timeouts always do.",
    )
    allow_pin_fallback = models.BooleanField(
        default=False,
        help_text="When a request pins a provider (X-Provider) that cannot serve it, use the route's other "
        "deployments instead of refusing.",
    )
    allow_store = models.BooleanField(
        default=False,
        help_text="Responses API: let OpenAI keep responses (store, previous_response_id), each follow-up going "
        "to the deployment that answered. Off: the gateway sends store: false and refuses store: true.",
    )
    allow_price_fields = models.BooleanField(
        default=False,
        help_text="Pass through what changes a request's price or what the provider keeps: service_tier other "
        "than auto/default, store: true (chat completions), and anthropic-beta values for server tools, "
        "files or 1M-token context. Off: they are removed before the call (docs/budgets.md).",
    )
    enabled = models.BooleanField(default=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["model"]
        verbose_name = "model route"

    def __str__(self) -> str:
        return self.model

    def clean(self) -> None:
        statuses = self.failover_statuses
        if not isinstance(statuses, list) or not all(
            isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in statuses
        ):
            raise ValidationError({"failover_statuses": "Must be a list of HTTP statuses from 400 to 599."})


class Deployment(models.Model):
    """One way to serve a route: a provider, its model name there, a weight and a priority."""

    route = models.ForeignKey(ModelRoute, on_delete=models.CASCADE, related_name="deployments")
    provider = models.ForeignKey(Provider, on_delete=models.PROTECT, related_name="deployments")
    upstream_model = models.CharField(max_length=200)
    weight = models.PositiveIntegerField(default=1, help_text="Share of traffic within its priority.")
    priority = models.IntegerField(default=0, help_text="Lower is preferred; 0 is the first choice.")
    enabled = models.BooleanField(default=True)
    # The latest failure the proxy saw on this deployment (throttled writes, see proxy.breaker).
    last_error = models.TextField(blank=True, editable=False)
    last_error_at = models.DateTimeField(null=True, blank=True, editable=False)

    class Meta:
        ordering = ["route__model", "priority", "-weight", "id"]
        constraints = [
            models.UniqueConstraint(
                fields=["route", "provider", "upstream_model"], name="deployment_unique_per_route"
            )
        ]

    def __str__(self) -> str:
        return f"{self.route.model} → {self.provider.name}/{self.upstream_model}"
