from __future__ import annotations

from django.core.validators import MaxValueValidator, MinValueValidator, RegexValidator
from django.db import models
from django.utils import timezone

from audit.models import BodyMode
from budgets.binding import validate_networks, validate_user_agents

name_validator = RegexValidator(
    r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$",
    "Use letters, digits, '.', '_' and '-' (at most 100 characters).",
)


class Team(models.Model):
    """Consumers that share budgets: a request of any member holds the team's budgets too,
    in the same atomic reservation as its consumer's and key's (docs/budgets.md#teams)."""

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    active = models.BooleanField(default=True, help_text="An inactive team's consumers' keys are refused.")
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class Consumer(models.Model):
    """A service or agent that calls the gateway; budgets and keys hang off it."""

    name = models.CharField(max_length=100, unique=True, validators=[name_validator])
    description = models.TextField(blank=True)
    active = models.BooleanField(default=True, help_text="Inactive consumers' keys are refused.")
    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.SET_NULL, related_name="consumers",
                             help_text="Its requests are also charged to the team's budgets.")
    # Kept here, not in the audit app, so that it comes with the key lookup that every
    # request makes anyway (budgets.selectors.KeyInfo) and reaches the audit record on
    # the request: the audit log never has to ask budgets about a consumer. NULL (not "")
    # says "not set: the default applies", as having no AuditPolicy row used to.
    audit_body_mode = models.CharField(  # noqa: DJ001
        "audit body mode", max_length=8, choices=BodyMode.choices, null=True, blank=True,
        help_text="What the audit log keeps of this consumer's request and response bodies; "
                  "empty: the gateway's default (TOLLGATE_AUDIT_DEFAULT_BODY_MODE).",
    )
    # Who may use the consumer's keys (budgets.binding); each key may narrow it further.
    allowed_networks = models.JSONField(
        default=list, blank=True, validators=[validate_networks],
        help_text="Client networks (CIDRs, IPv4 or IPv6) all its keys may be used from; empty: any.",
    )
    allowed_user_agents = models.JSONField(
        default=list, blank=True, validators=[validate_user_agents],
        help_text="User-Agent prefixes (e.g. claude-cli/) all its keys may be used by; empty: any.",
    )
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ApiKey(models.Model):
    """A gateway key. Only its SHA-256 digest and a short visible prefix are stored."""

    consumer = models.ForeignKey(Consumer, on_delete=models.CASCADE, related_name="keys")
    name = models.CharField(max_length=100, blank=True, help_text="A label, e.g. 'ci-runner'.")
    prefix = models.CharField(max_length=16, editable=False, db_index=True)
    digest = models.CharField(max_length=64, unique=True, editable=False)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    expires_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)
    last_used_at = models.DateTimeField(null=True, blank=True, editable=False)
    allowed_routes = models.JSONField(
        default=list,
        blank=True,
        help_text="Route names this key may call; empty means every route.",
    )
    allowed_networks = models.JSONField(
        default=list, blank=True, validators=[validate_networks],
        help_text="Client networks (CIDRs, IPv4 or IPv6, e.g. 10.0.0.0/8) this key may be used from; empty: "
        "any. The client address is the one TOLLGATE_TRUSTED_PROXIES works out.",
    )
    allowed_user_agents = models.JSONField(
        default=list, blank=True, validators=[validate_user_agents],
        help_text="User-Agent prefixes this key may be used by, e.g. claude-cli/ (case-insensitive); empty: any.",
    )

    class Meta:
        ordering = ["consumer__name", "-created_at"]
        verbose_name = "API key"

    def __str__(self) -> str:
        return f"{self.prefix}… ({self.consumer.name})" if self.consumer_id else self.prefix

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None and self.expires_at <= timezone.now():
            return "expired"
        return "active"


# --- Budgets, rate limits and prices (issue 4, docs/budgets.md) -------------------


def _validate_timezone(value: str) -> None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    from django.core.exceptions import ValidationError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValidationError(f"{value!r} is not a known IANA time zone (e.g. UTC, Europe/Paris).") from None


class Metric(models.TextChoices):
    TOKENS = "tokens", "tokens"
    REQUESTS = "requests", "requests"
    COST_USD = "cost_usd", "cost (micro-dollars)"


class Period(models.TextChoices):
    DAY = "day", "day"
    WEEK = "week", "week (from Monday)"
    MONTH = "month", "calendar month"


class Mode(models.TextChoices):
    HARD = "hard", "hard: refuse requests over the limit"
    SOFT = "soft", "soft: alert only"


_now = timezone.now


def _one_owner_constraint(name: str) -> models.CheckConstraint:
    return models.CheckConstraint(
        condition=(models.Q(consumer__isnull=False, key__isnull=True)
                   | models.Q(consumer__isnull=True, key__isnull=False)),
        name=name,
        violation_error_message="Give either a consumer or a key, not both.",
    )


def validate_routes(value: object) -> None:
    from django.core.exceptions import ValidationError

    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValidationError('Give a list of route names, e.g. ["opus"]; empty: every route.')
    if len(value) > 1000:
        raise ValidationError("At most 1000 routes.")


def routes_normalize(routes: list) -> list[str]:
    """Sorted, stripped and without repeats: one spelling of a set of routes."""
    return sorted({route.strip() for route in routes if isinstance(route, str)})


class Budget(models.Model):
    """A limit on a team's, a consumer's or one key's tokens, requests or cost per period,
    on every route or only on those in `routes`.

    Usage is counted per period window (BudgetUsage), so a new period starts at
    zero by construction, whether or not the reset job ran.
    """

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
                             help_text="Set this instead of the consumer to limit every consumer of a team together.")
    consumer = models.ForeignKey(Consumer, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="budgets")
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="budgets",
                            help_text="Set this instead of the consumer to limit a single key.")
    metric = models.CharField(max_length=16, choices=Metric.choices)
    limit = models.PositiveBigIntegerField(
        help_text="Tokens, requests, or micro-dollars for cost (1 USD = 1,000,000)."
    )
    period = models.CharField(max_length=8, choices=Period.choices, default=Period.DAY)
    timezone = models.CharField(max_length=64, default="UTC", validators=[_validate_timezone],
                                help_text="Where the period's midnight is, e.g. Europe/Paris.")
    mode = models.CharField(max_length=8, choices=Mode.choices, default=Mode.HARD)
    alert_at_percent = models.PositiveSmallIntegerField(
        null=True, blank=True, validators=[MinValueValidator(1), MaxValueValidator(100)],
        help_text="Alert once per period when usage reaches this share of the limit.",
    )
    alert_email = models.EmailField(blank=True)
    alert_webhook = models.URLField(blank=True, max_length=500)
    routes = models.JSONField(
        default=list, blank=True, validators=[validate_routes],
        help_text="Route names (models) this budget counts and limits, e.g. opus; empty: every route.",
    )
    enabled = models.BooleanField(default=True)
    # `timezone` above is a field: reach the module through its other name here.
    created_at = models.DateTimeField(default=_now, editable=False)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["consumer__name", "metric", "period", "id"]
        constraints = [models.CheckConstraint(
            condition=(models.Q(team__isnull=False, consumer__isnull=True, key__isnull=True)
                       | models.Q(team__isnull=True, consumer__isnull=False, key__isnull=True)
                       | models.Q(team__isnull=True, consumer__isnull=True, key__isnull=False)),
            name="budget_has_one_owner",
            violation_error_message="Give exactly one owner: a team, a consumer or a key.",
        )]

    def __str__(self) -> str:
        routes = f" on {', '.join(self.routes)}" if self.routes else ""
        return f"{self.owner_display}: {self.limit_display} {self.metric} per {self.period}{routes} ({self.mode})"

    def clean(self) -> None:
        # The one-owner rule is the check constraint, which full_clean validates too (and skips
        # when the form or file sets the owner itself, as an inline does).
        if isinstance(self.routes, list):
            self.routes = routes_normalize(self.routes)

    @property
    def owner_kind(self) -> str:
        """team, consumer or key."""
        return "team" if self.team_id is not None else "key" if self.key_id is not None else "consumer"

    @property
    def owner_display(self) -> str:
        if self.team is not None:
            return f"team {self.team.name}"
        if self.key is not None:
            return f"key {self.key.prefix}"
        return self.consumer.name if self.consumer is not None else "?"

    @property
    def limit_display(self) -> str:
        return format_amount(self.metric, self.limit)


def format_amount(metric: str, amount: int) -> str:
    if metric == Metric.COST_USD:
        return f"${amount / 1_000_000:,.6f}".rstrip("0").rstrip(".")
    return f"{amount:,}"


class BudgetUsage(models.Model):
    """What a budget used in one period window. Changed only by atomic UPDATEs."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="usages")
    period_start = models.DateField(help_text="First day of the window, in the budget's time zone.")
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField(db_index=True)
    used = models.BigIntegerField(default=0)
    # Held by requests in flight (database counters only; with Redis they live there).
    reserved = models.BigIntegerField(default=0)
    alert_sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="budget_usage_per_window")]
        verbose_name = "budget usage"

    def __str__(self) -> str:
        return f"{self.budget_id} {self.period_start}: {self.used}"


class BudgetReservation(models.Model):
    """A request's hold on a budget window (database counters); expired holds are released."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="reservations")
    period_start = models.DateField()
    request_id = models.CharField(max_length=64)
    amount = models.BigIntegerField()
    expires_at = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.request_id}: {self.amount}"


class BudgetHistory(models.Model):
    """A closed period: what the budget allowed and what was used. Written once per window."""

    budget = models.ForeignKey(Budget, on_delete=models.CASCADE, related_name="history")
    period_start = models.DateField()
    starts_at = models.DateTimeField()
    ends_at = models.DateTimeField()
    metric = models.CharField(max_length=16, choices=Metric.choices)
    limit = models.PositiveBigIntegerField()
    used = models.BigIntegerField()
    closed_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-period_start"]
        constraints = [models.UniqueConstraint(fields=["budget", "period_start"], name="budget_history_per_window")]
        verbose_name_plural = "budget history"

    def __str__(self) -> str:
        return f"{self.budget_id} {self.period_start}: {self.used}/{self.limit}"


class RateLimit(models.Model):
    """Requests or tokens per time window for a consumer (or one key); APISIX limit-count style."""

    consumer = models.ForeignKey(Consumer, null=True, blank=True, on_delete=models.CASCADE,
                                 related_name="rate_limits")
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.CASCADE, related_name="rate_limits")
    requests = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    tokens = models.PositiveIntegerField(null=True, blank=True, validators=[MinValueValidator(1)])
    window_seconds = models.PositiveIntegerField(default=60, validators=[MinValueValidator(1)])
    rejected_code = models.PositiveSmallIntegerField(
        default=429, validators=[MinValueValidator(400), MaxValueValidator(599)]
    )
    rejected_msg = models.CharField(max_length=300, blank=True,
                                    help_text="Message for refused requests; a default names the limit.")
    enabled = models.BooleanField(default=True)

    class Meta:
        ordering = ["id"]
        constraints = [
            _one_owner_constraint("ratelimit_has_one_owner"),
            models.CheckConstraint(
                condition=(models.Q(requests__isnull=False, tokens__isnull=True)
                           | models.Q(requests__isnull=True, tokens__isnull=False)),
                name="ratelimit_requests_or_tokens",
                violation_error_message="Limit either requests or tokens per window, not both.",
            ),
        ]

    def __str__(self) -> str:
        what = f"{self.requests} requests" if self.requests is not None else f"{self.tokens} tokens"
        return f"{what} per {self.window_seconds}s"


class ModelPrice(models.Model):
    """List price of an upstream model by token class, in micro-dollars per million tokens,
    from `valid_from` on (budgets/pricing.py prices a request with it).

    An empty class costs what its parent class costs: cached input and cache writes
    the input price (the provider gives no cache discount, or charges no write
    surcharge), one-hour cache writes the cache-write price, reasoning output the
    output price. `model` "*" prices every model of `provider` that has no row of its
    own (a fallback, so that no model served is free); an empty `provider` makes a
    row apply through any provider.
    """

    model = models.CharField(
        max_length=200,
        help_text="Upstream model name; also prices its dated versions (gpt-4o-2024-08-06, "
                  "claude-3-5-haiku-20241022, gemini-2.5-pro-001, ...-latest), never another "
                  "model (gpt-4o-mini, claude-opus-4-8). \"*\": every model of the provider without "
                  "a price of its own.",
    )
    provider = models.CharField(
        max_length=100, blank=True, default="",
        help_text="A gateway provider's name: the price applies only through that provider. "
                  "Empty: through any provider.",
    )
    input_per_million = models.PositiveBigIntegerField(
        help_text="Micro-dollars per million uncached input tokens ($1 = 1,000,000).")
    cached_input_per_million = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million input tokens read from the provider's cache. "
                  "Empty: the provider gives no cache discount (the input price).")
    cache_write_per_million = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million input tokens written to the cache (Anthropic's "
                  "5-minute writes, OpenAI's default retention). Empty: no surcharge (the input price).")
    cache_write_1h_per_million = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million tokens written to Anthropic's 1-hour cache. "
                  "Empty: the cache-write price.")
    output_per_million = models.PositiveBigIntegerField(help_text="Micro-dollars per million output tokens.")
    reasoning_output_per_million = models.PositiveBigIntegerField(
        null=True, blank=True,
        help_text="Micro-dollars per million reasoning (thinking) tokens, a part of the output. "
                  "Empty: the output price (what every provider charges today).")
    valid_from = models.DateTimeField(default=timezone.now)
    source = models.CharField(max_length=300, blank=True,
                              help_text="Where the price comes from: a URL or a document's name.")
    note = models.CharField(max_length=200, blank=True)

    class Meta:
        ordering = ["model", "provider", "-valid_from"]
        constraints = [models.UniqueConstraint(fields=["provider", "model", "valid_from"],
                                               name="model_price_unique")]
        verbose_name = "model price"

    def __str__(self) -> str:
        scope = f" via {self.provider}" if self.provider else ""
        return (f"{self.model}{scope}: ${self.input_per_million / 1e6:g}/"
                f"${self.output_per_million / 1e6:g} per M")
