"""The audit log (DESIGN §3): one chained, append-only event per proxy request."""
from __future__ import annotations

from django.db import models
from django.utils import timezone

GENESIS_HASH = "0" * 64


class BodyMode(models.TextChoices):
    NONE = "none", "none: no body information"
    METADATA = "metadata", "metadata: request parameters, no content"
    FULL = "full", "full: redacted request and response bodies"


class UsageSource(models.TextChoices):
    PROVIDER = "provider", "provider: its own usage fields"
    ESTIMATED = "estimated", "estimated: usage never came (disconnect, cut, timeout)"


class ChainFormat(models.IntegerChoices):
    """Which columns an event's hash covers (audit.chain); NULL in `format` is version 1."""

    V1 = 1, "1: the columns of issue #15, usage_source only when set"
    V2 = 2, "2: every column, token classes and lane included"


class AuditEvent(models.Model):
    """One request that reached a proxy endpoint, answered or refused.

    Names things by value (ids and names, not foreign keys), so an event outlives
    and never changes with the consumer, key, route or provider it names. The hash
    chain is split into lanes (issue #18): `lane_seq` is the event's place in its
    lane, contiguous and assigned under that lane's head lock, so `hash` =
    HMAC(prev_hash + this row's values) links every event to the one before it in
    its lane. `seq` is unique across lanes and grows with time (a PostgreSQL sequence,
    drawn under the lane's lock), but has gaps; rows written before lanes are lane 0
    with lane_seq = seq. On PostgreSQL the table is partitioned
    by ranges of `seq` (audit.partitions), which keeps `seq` alone the primary key.
    """

    seq = models.BigIntegerField(primary_key=True)
    lane = models.PositiveSmallIntegerField(default=0)
    lane_seq = models.BigIntegerField(help_text="Place in the lane's chain: 1, 2, 3... without gaps.")
    # NULL: version 1 (rows sealed before versions existed); see ChainFormat and audit.chain.
    format = models.PositiveSmallIntegerField(null=True, blank=True, choices=ChainFormat.choices)
    time = models.DateTimeField(help_text="When the request arrived.")
    request_id = models.CharField(max_length=64, db_index=True)
    consumer_id = models.BigIntegerField(null=True, blank=True)
    consumer_name = models.CharField("consumer", max_length=100, blank=True)
    key_prefix = models.CharField(max_length=16, blank=True)
    route = models.CharField(max_length=200, blank=True)
    provider = models.CharField(max_length=100, blank=True)
    upstream_model = models.CharField(max_length=200, blank=True)
    endpoint = models.CharField(max_length=50)
    status = models.PositiveSmallIntegerField(null=True, blank=True)
    error_class = models.CharField(max_length=64, blank=True)
    prompt_tokens = models.IntegerField(null=True, blank=True)
    completion_tokens = models.IntegerField(null=True, blank=True)
    cost_micros = models.BigIntegerField(default=0, help_text="Cost in micro-dollars.")
    latency_us = models.BigIntegerField(default=0, help_text="Total latency in microseconds.")
    ttft_us = models.BigIntegerField(null=True, blank=True, help_text="Time to first byte of a stream (µs).")
    attempts = models.PositiveSmallIntegerField(default=0)
    client_ip = models.CharField(max_length=45, blank=True)
    user_agent = models.CharField(max_length=300, blank=True)
    body_mode = models.CharField(max_length=8, choices=BodyMode.choices, default=BodyMode.NONE)
    # Where the token counts came from: the provider's usage fields, or the gateway's estimate when
    # they never came (a client that left, a stream cut, a timeout). Empty before issue #16.
    # NULL, not "": the audit chain hashes this column only when it holds a value (audit.chain).
    usage_source = models.CharField(max_length=16, null=True, blank=True, choices=UsageSource.choices)  # noqa: DJ001
    # Token classes (issue #16), parts of prompt_tokens (cache reads and writes) and of
    # completion_tokens (reasoning), as the provider billed them; NULL in version 1 rows.
    cache_read_tokens = models.IntegerField(null=True, blank=True)
    cache_write_tokens = models.IntegerField(null=True, blank=True, help_text="Default (5-minute) cache writes.")
    cache_write_1h_tokens = models.IntegerField(null=True, blank=True, help_text="One-hour cache writes.")
    reasoning_tokens = models.IntegerField(null=True, blank=True)
    request_body = models.TextField(blank=True)
    response_body = models.TextField(blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64)
    # Which chain key sealed the row (audit.chain.key_id_of); null: before key ids (legacy).
    key_id = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001 (null = legacy key, not "")

    class Meta:
        ordering = ["-seq"]
        indexes = [
            models.Index(fields=["time"], name="audit_event_time"),
            models.Index(fields=["consumer_name", "time"], name="audit_event_consumer_time"),
            # Not unique: a partitioned table's unique indexes must hold the partition key (seq).
            # The lane's head lock keeps lane_seq unique; audit_verify checks it.
            models.Index(fields=["lane", "lane_seq"], name="audit_event_lane_seq"),
        ]
        permissions = [("export_auditevent", "Can export audit events")]

    def __str__(self) -> str:
        return f"{self.request_id} {self.status}"

    @property
    def cost_usd(self) -> float:
        return self.cost_micros / 1_000_000


class AuditChainHead(models.Model):
    """The head of one lane of the chain (id = lane + 1), and where that lane starts.

    A writer locks one lane's head (SELECT ... FOR UPDATE SKIP LOCKED: the first free
    lane) for the length of one batch. `seq` is the lane's last `lane_seq`. Retention
    moves `pruned_seq`/`pruned_hash` forward, so verification can still check that the
    oldest remaining event of the lane links to the last deleted one.
    """

    id = models.PositiveSmallIntegerField(primary_key=True, default=1)
    seq = models.BigIntegerField(default=0, help_text="The lane's last lane_seq.")
    hash = models.CharField(max_length=64, default=GENESIS_HASH)
    pruned_seq = models.BigIntegerField(default=0)
    pruned_hash = models.CharField(max_length=64, default=GENESIS_HASH)
    # HMAC(chain key, seq, hash, key_id), rewritten with every move (audit.chain.head_fields),
    # so a head moved back by someone without the key shows.
    key_id = models.CharField(max_length=16, null=True, blank=True)  # noqa: DJ001 (null = legacy key, not "")
    mac = models.CharField(max_length=64, blank=True, default="")

    def __str__(self) -> str:
        return f"audit chain head of lane {self.lane} at {self.seq}"

    @property
    def lane(self) -> int:
        return self.id - 1


class AuditAnchor(models.Model):
    """Anchor N: the chain heads at one moment, linked to anchor N-1 and signed (audit.anchors).

    `body` is the canonical JSON that was signed; copies go to the export directory and
    the sink, so a rewind of the rows, the heads and this table together still shows.
    """

    number = models.BigIntegerField(primary_key=True)
    created_at = models.DateTimeField(default=timezone.now)
    body = models.TextField()
    digest = models.CharField(max_length=64, help_text="SHA-256 of the body; the next anchor names it.")
    signature = models.CharField(max_length=128, blank=True, help_text="Ed25519, hex; empty if unsigned.")

    class Meta:
        ordering = ["-number"]

    def __str__(self) -> str:
        return f"audit anchor {self.number}"


class AuditExport(models.Model):
    """One day written by the daily export; the unique day makes the job idempotent."""

    day = models.DateField(unique=True)
    format = models.CharField(max_length=8)
    path = models.CharField(max_length=500)
    rows = models.BigIntegerField()
    sha256 = models.CharField(max_length=64)
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["-day"]

    def __str__(self) -> str:
        return f"{self.day}: {self.rows} rows"


class AuditSinkCursor(models.Model):
    """How far a sink has delivered one lane: every event of the lane with lane_seq <= last_seq
    was acknowledged (lanes commit independently, so one cursor over `seq` could skip a row)."""

    name = models.CharField(max_length=50)
    lane = models.PositiveSmallIntegerField(default=0)
    last_seq = models.BigIntegerField(default=0)
    delivered = models.BigIntegerField(default=0)
    last_error = models.TextField(blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["name", "lane"], name="audit_sink_cursor_lane")]

    def __str__(self) -> str:
        return f"{self.name} lane {self.lane} at {self.last_seq}"


class UsageDimension(models.TextChoices):
    TOTAL = "total", "total"
    CONSUMER = "consumer", "consumer"
    PROVIDER = "provider", "provider"
    MODEL = "model", "upstream model"


class DailyUsage(models.Model):
    """A closed UTC day of the audit log, added up per consumer, provider and model (the dashboard's rollup).

    Written once per day by audit.usage.usage_rollup_day (idempotent); the `total`
    row (name "") of a day says that the day is rolled up. The model moved here from
    another app without copying a row, so its table keeps the name it was created with.
    """

    day = models.DateField()
    dimension = models.CharField(max_length=10, choices=UsageDimension.choices)
    name = models.CharField(max_length=200, blank=True)
    requests = models.BigIntegerField(default=0)
    errors = models.BigIntegerField(default=0)
    failovers = models.BigIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    cost_micros = models.BigIntegerField(default=0)

    class Meta:
        db_table = "budgets_dailyusage"
        constraints = [models.UniqueConstraint(fields=["dimension", "day", "name"], name="daily_usage_unique")]
        verbose_name_plural = "daily usage"

    def __str__(self) -> str:
        return f"{self.day} {self.dimension} {self.name}: {self.requests}"
