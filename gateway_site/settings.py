"""Tollgate settings, read from the environment (see docs/configuration.md)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from gateway_site.lib.env import (
    envbool,
    envchoice,
    envfloat,
    envint,
    envlist,
    envsecret,
    envstr,
    parse_database_url,
)
from gateway_site.lib.logs import logging_config

BASE_DIR = Path(__file__).resolve().parent.parent

DEBUG = envbool("DJANGO_DEBUG", False)
SECRET_KEY = envsecret("DJANGO_SECRET_KEY") or ""
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("DJANGO_SECRET_KEY is required unless DJANGO_DEBUG=1")
    SECRET_KEY = "insecure-debug-only-key-do-not-use-in-production"

ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"])
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", [])

INSTALLED_APPS = [
    # Django's admin with Tollgate's admin site (sign-in: TOTP and single sign-on; gateway_site/auth_admin.py).
    "gateway_site.apps.TollgateAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "budgets",
    "proxy",
    "audit",
    "gateway_site",
]

# Only the admin and the admin API pass through these; the proxy endpoints are
# served by a middleware-free handler (gateway_site/asgi.py) to keep the hot path lean.
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    # request.user.is_verified(): whether this session passed a TOTP check (django-otp).
    "django_otp.middleware.OTPMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: turns a locked-out sign-in into its 429 answer.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "gateway_site.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "gateway_site.wsgi.application"
ASGI_APPLICATION = "gateway_site.asgi.application"

DATABASES = {
    "default": parse_database_url(
        envstr("DATABASE_URL", "sqlite:///var/tollgate.sqlite3"), base_dir=BASE_DIR
    )
}
_db = DATABASES["default"]
if _db["ENGINE"].endswith("sqlite3") and _db["NAME"] != ":memory:":
    Path(_db["NAME"]).parent.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis, the shared state of several processes: one server (REDIS_URL), a Redis Cluster, or
# the master a Sentinel group names (docs/deployment.md, "Redis Cluster and Sentinel"). At most one.
REDIS_URL = envstr("REDIS_URL", "")
TOLLGATE_REDIS_CLUSTER_NODES = envlist("TOLLGATE_REDIS_CLUSTER_NODES")  # host:port,... (some nodes suffice)
TOLLGATE_REDIS_SENTINELS = envlist("TOLLGATE_REDIS_SENTINELS")  # host:port,... of the sentinels
TOLLGATE_REDIS_SENTINEL_SERVICE = envstr("TOLLGATE_REDIS_SENTINEL_SERVICE", "")
# AUTH for the Cluster's or Sentinel's data nodes, and for the sentinels themselves (REDIS_URL carries its own).
TOLLGATE_REDIS_PASSWORD = envsecret("TOLLGATE_REDIS_PASSWORD")
TOLLGATE_REDIS_SENTINEL_PASSWORD = envsecret("TOLLGATE_REDIS_SENTINEL_PASSWORD")
if sum(map(bool, (REDIS_URL, TOLLGATE_REDIS_CLUSTER_NODES, TOLLGATE_REDIS_SENTINELS))) > 1:
    raise ImproperlyConfigured("set only one of REDIS_URL, TOLLGATE_REDIS_CLUSTER_NODES and TOLLGATE_REDIS_SENTINELS")
if TOLLGATE_REDIS_SENTINELS and not TOLLGATE_REDIS_SENTINEL_SERVICE:
    raise ImproperlyConfigured("TOLLGATE_REDIS_SENTINELS needs TOLLGATE_REDIS_SENTINEL_SERVICE (the master's name)")
_REDIS_REPLICATED = bool(TOLLGATE_REDIS_CLUSTER_NODES or TOLLGATE_REDIS_SENTINELS)
CACHES: dict[str, dict[str, Any]]
if REDIS_URL or _REDIS_REPLICATED:
    CACHES = {
        "default": {
            # Django's own backend speaks to one server only; ours takes its client from
            # gateway_site.lib.redisclient, which also speaks Cluster and Sentinel.
            "BACKEND": ("gateway_site.lib.rediscache.RedisCache" if _REDIS_REPLICATED
                        else "django.core.cache.backends.redis.RedisCache"),
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": envstr("TOLLGATE_CACHE_PREFIX", "tg"),
            "OPTIONS": {"socket_timeout": 2, "socket_connect_timeout": 2},
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.locmem.LocMemCache",
            "LOCATION": "tollgate",
        }
    }
if "{" in CACHES["default"].get("KEY_PREFIX", "") or "}" in CACHES["default"].get("KEY_PREFIX", ""):
    # A brace in the prefix would become every key's hash tag: one slot for the whole cluster.
    raise ImproperlyConfigured("TOLLGATE_CACHE_PREFIX must not contain { or }")

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(envstr("DJANGO_STATIC_ROOT", str(BASE_DIR / "var" / "static")))

# Production hardening; a reverse proxy terminates TLS (docs/deployment.md).
if envbool("TOLLGATE_BEHIND_TLS_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SESSION_COOKIE_SECURE = envbool("DJANGO_SECURE_COOKIES", not DEBUG)
CSRF_COOKIE_SECURE = SESSION_COOKIE_SECURE
SESSION_COOKIE_HTTPONLY = True

REST_FRAMEWORK: dict[str, Any] = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        # Hashed, expiring tokens (gateway_site.models.ApiToken), sent as `Authorization: Token <token>`.
        "gateway_site.auth_drf.ApiTokenAuthentication",
        "gateway_site.auth_drf.AdminSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"],
}

# --- Celery ---------------------------------------------------------------
# With REDIS_URL, Redis is the broker. Without it (the embedded default) tasks
# run in the calling process, so the quickstart needs no broker server. Celery's Redis
# transport does not speak Cluster: with a Cluster (or Sentinel) name the broker
# (RabbitMQ, a plain Redis, or kombu's sentinel://), or ask for tasks in the calling process.
CELERY_BROKER_URL = envstr("CELERY_BROKER_URL", REDIS_URL or "memory://")
CELERY_TASK_ALWAYS_EAGER = envbool("CELERY_TASK_ALWAYS_EAGER", not (REDIS_URL or envstr("CELERY_BROKER_URL")))
if _REDIS_REPLICATED and not envstr("CELERY_BROKER_URL") and envstr("CELERY_TASK_ALWAYS_EAGER") == "":
    raise ImproperlyConfigured(
        "with TOLLGATE_REDIS_CLUSTER_NODES or TOLLGATE_REDIS_SENTINELS, set CELERY_BROKER_URL (amqp://..., a plain "
        "redis://..., or sentinel://...) or CELERY_TASK_ALWAYS_EAGER=1 (tasks in the calling process)")
if CELERY_BROKER_URL.startswith("sentinel://"):
    # kombu's Sentinel transport: the same sentinels (or others) and the master's name.
    CELERY_BROKER_TRANSPORT_OPTIONS = {"master_name": envstr("CELERY_BROKER_SENTINEL_SERVICE",
                                                             TOLLGATE_REDIS_SENTINEL_SERVICE)}
    if not CELERY_BROKER_TRANSPORT_OPTIONS["master_name"]:
        raise ImproperlyConfigured("a sentinel:// CELERY_BROKER_URL needs CELERY_BROKER_SENTINEL_SERVICE "
                                   "(or TOLLGATE_REDIS_SENTINEL_SERVICE)")
CELERY_TASK_ACKS_LATE = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TIMEZONE = "UTC"
# Separate queues let several deployments (or test runs) share one broker.
CELERY_TASK_DEFAULT_QUEUE = envstr("TOLLGATE_CELERY_QUEUE", "tollgate")
# Periodic jobs; each app's section below adds its entries.
CELERY_BEAT_SCHEDULE: dict = {}

# --- Tollgate -------------------------------------------------------------
# Largest request body the proxy accepts; the rest of a bigger one is never read: a 413 as soon as
# the count passes it (gateway_site/asgi.py). Bodies up to it are kept in memory, never spooled.
TOLLGATE_MAX_BODY_BYTES = envint("TOLLGATE_MAX_BODY_BYTES", 8 * 1024 * 1024, minimum=1024)
DATA_UPLOAD_MAX_MEMORY_SIZE = TOLLGATE_MAX_BODY_BYTES
# Seconds a proxy request's whole body may take to arrive; a slower one gets a 408 and its
# connection closed, so a trickled or endless body holds nothing for long.
TOLLGATE_BODY_READ_TIMEOUT_SECONDS = envfloat("TOLLGATE_BODY_READ_TIMEOUT_SECONDS", 30.0, minimum=0.1)
# Largest total of request header names and values, on every path; bigger get a 431 before
# any work (gateway_site/asgi.py). The server itself sets no limit.
TOLLGATE_MAX_HEADER_BYTES = envint("TOLLGATE_MAX_HEADER_BYTES", 32 * 1024, minimum=4096)
# Seconds an authenticated key stays in a worker's memory; a change to a key or
# consumer is seen by every worker within TOLLGATE_AUTH_RECHECK_SECONDS.
TOLLGATE_AUTH_CACHE_SECONDS = envfloat("TOLLGATE_AUTH_CACHE_SECONDS", 30.0, minimum=0)
TOLLGATE_AUTH_RECHECK_SECONDS = envfloat("TOLLGATE_AUTH_RECHECK_SECONDS", 1.0, minimum=0)
# Seconds routes and providers stay cached per worker (invalidated on change too).
TOLLGATE_ROUTE_CACHE_SECONDS = envfloat("TOLLGATE_ROUTE_CACHE_SECONDS", 30.0, minimum=0)
# Upstream connection pool, per worker process.
TOLLGATE_UPSTREAM_MAX_CONNECTIONS = envint("TOLLGATE_UPSTREAM_MAX_CONNECTIONS", 10000, minimum=1)
# Redis connections per worker for budget and rate-limit counters.
TOLLGATE_REDIS_MAX_CONNECTIONS = envint("TOLLGATE_REDIS_MAX_CONNECTIONS", 64, minimum=1)
# On a Redis Cluster or Sentinel, counters unreachable for less than this long are taken for a
# failover: requests are refused (503 limits_unavailable) even with TOLLGATE_LIMITS_FAIL_OPEN,
# which applies only to an outage that lasts longer (docs/deployment.md).
TOLLGATE_REDIS_FAILOVER_SECONDS = envfloat("TOLLGATE_REDIS_FAILOVER_SECONDS", 15.0, minimum=0)
# Add x-tollgate-stages (milliseconds per stage of the request path) to proxy
# responses: for the benchmark's profile, not for production.
TOLLGATE_STAGE_TIMING = envbool("TOLLGATE_STAGE_TIMING", False)
# What the quickstart and sandbox use when nothing else is configured.
TOLLGATE_SANDBOX_URL = envstr("TOLLGATE_SANDBOX_URL", "http://127.0.0.1:8787")

LOG_LEVEL = envchoice("TOLLGATE_LOG_LEVEL", "info", ("debug", "info", "warning", "error", "critical"))
# One JSON object per line (or text), the same for Django, gunicorn, uvicorn and Celery (docs/operations.md).
LOG_FORMAT = envchoice("TOLLGATE_LOG_FORMAT", "text" if DEBUG else "json", ("json", "text"))
LOGGING = logging_config(fmt=LOG_FORMAT, level=LOG_LEVEL, access_log=envbool("TOLLGATE_ACCESS_LOG", False))

# --- Budgets and rate limits (docs/budgets.md) --------------------------------
# When Redis (the shared counters) cannot be reached, refuse requests with a 503
# (fail closed, the default) or serve them unmetered and charge them afterwards (fail open).
TOLLGATE_LIMITS_FAIL_OPEN = envbool("TOLLGATE_LIMITS_FAIL_OPEN", False)
# Seconds a worker keeps a consumer's budgets, rate limits and the price table in memory
# (a change is also seen by every worker within TOLLGATE_AUTH_RECHECK_SECONDS).
TOLLGATE_LIMITS_CACHE_SECONDS = envfloat("TOLLGATE_LIMITS_CACHE_SECONDS", 30.0, minimum=0)
# A reservation not settled within this time (its worker was killed) stops holding budget.
TOLLGATE_RESERVATION_TTL_SECONDS = envint("TOLLGATE_RESERVATION_TTL_SECONDS", 900, minimum=10)
# With Redis, each worker writes settled charges to the database copy this often, in
# one transaction (0: with every request, which costs a commit per request).
TOLLGATE_BUDGET_MIRROR_SECONDS = envfloat("TOLLGATE_BUDGET_MIRROR_SECONDS", 0.5, minimum=0)
# Budget alerts by email go through Django's email settings (EMAIL_HOST, ...), from this address.
TOLLGATE_ALERT_FROM_EMAIL = envstr("TOLLGATE_ALERT_FROM_EMAIL", "tollgate@localhost")
# django-ratelimit counts requests per window on the shared cache; failures are
# handled by TOLLGATE_LIMITS_FAIL_OPEN, so it must raise rather than guess.
RATELIMIT_USE_CACHE = "default"
RATELIMIT_FAIL_OPEN = False


def _budget_beat_schedule() -> dict:
    from celery.schedules import crontab

    return {
        # Closes finished periods into history and sends missed alerts; idempotent,
        # catches up after downtime. Usage itself never depends on it running.
        "budgets-reset": {
            "task": "budgets.tasks.budget_reset",
            "schedule": crontab(hour=envint("TOLLGATE_BUDGET_RESET_HOUR", 0, minimum=0),
                                minute=envint("TOLLGATE_BUDGET_RESET_MINUTE", 5, minimum=0)),
        },
        # Releases holds of killed workers (database counters; Redis expires them itself).
        "budgets-expire-reservations": {
            "task": "budgets.tasks.budget_reservations_expire",
            "schedule": 60.0,
        },
    }


CELERY_BEAT_SCHEDULE.update(_budget_beat_schedule())

# --- Audit log (docs/audit.md) ---------------------------------------------
# Group commit: rows of concurrent requests wait this long to share one insert
# (each request still waits for its own row's commit before it is answered).
# With 0, rows that arrive while a batch is committing form the next batch.
TOLLGATE_AUDIT_BATCH_WINDOW_MS = envfloat("TOLLGATE_AUDIT_BATCH_WINDOW_MS", 0.0, minimum=0)
TOLLGATE_AUDIT_BATCH_MAX = envint("TOLLGATE_AUDIT_BATCH_MAX", 500, minimum=1)
# PostgreSQL only. Off: a commit returns before its WAL reaches the disk. Events
# still survive a killed gateway worker, but the last ~0.6 s of them can be lost
# if the database server itself crashes. On (the default): nothing is lost.
TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT = envbool("TOLLGATE_AUDIT_SYNCHRONOUS_COMMIT", True)
# Lanes of the hash chain (issue #18): each has its own head, and a writer takes the first
# lane no other writer holds, so writers do not queue behind one row. SQLite locks the whole
# database for a write anyway: one lane there. Lowering it later is safe (old lanes still verify).
TOLLGATE_AUDIT_LANES = envint("TOLLGATE_AUDIT_LANES", 1 if _db["ENGINE"].endswith("sqlite3") else 4,
                              minimum=1)
# Key of the HMAC that chains events and seals the chain head (or ..._FILE). Required
# unless DEBUG: a key derived from SECRET_KEY would be one more thing that secret unlocks.
# Rows carry the id of the key that sealed them; after a change, list the earlier keys in
# TOLLGATE_AUDIT_CHAIN_OLD_KEYS (whitespace-separated, or ..._FILE one per line) so old
# rows still verify. Rows from before key ids verify with the key derived from SECRET_KEY.
TOLLGATE_AUDIT_CHAIN_KEY = envsecret("TOLLGATE_AUDIT_CHAIN_KEY") or ""
if not TOLLGATE_AUDIT_CHAIN_KEY and not DEBUG:
    raise ImproperlyConfigured("TOLLGATE_AUDIT_CHAIN_KEY (or TOLLGATE_AUDIT_CHAIN_KEY_FILE) is required unless "
                               "DJANGO_DEBUG=1 (docs/audit.md#keys)")
TOLLGATE_AUDIT_CHAIN_OLD_KEYS = (envsecret("TOLLGATE_AUDIT_CHAIN_OLD_KEYS") or "").split()
# Bodies: the default mode for consumers whose audit body mode is empty, the size cut
# (characters per body) and extra regular expressions redacted besides secrets.
TOLLGATE_AUDIT_DEFAULT_BODY_MODE = envchoice("TOLLGATE_AUDIT_DEFAULT_BODY_MODE", "metadata",
                                             ("none", "metadata", "full"))
TOLLGATE_AUDIT_BODY_MAX_CHARS = envint("TOLLGATE_AUDIT_BODY_MAX_CHARS", 16 * 1024, minimum=0)
TOLLGATE_AUDIT_REDACT_EMAILS = envbool("TOLLGATE_AUDIT_REDACT_EMAILS", True)
TOLLGATE_AUDIT_REDACT_CARDS = envbool("TOLLGATE_AUDIT_REDACT_CARDS", True)
TOLLGATE_AUDIT_REDACT_PATTERNS = [p for p in envstr("TOLLGATE_AUDIT_REDACT_PATTERNS", "").split("\n") if p.strip()]
# Daily export: a directory (empty disables it), its format, and how long after
# midnight (UTC) a day counts as complete (a request is dated when it arrived).
TOLLGATE_AUDIT_EXPORT_DIR = envstr("TOLLGATE_AUDIT_EXPORT_DIR", "")
TOLLGATE_AUDIT_EXPORT_FORMAT = envchoice("TOLLGATE_AUDIT_EXPORT_FORMAT", "jsonl", ("jsonl", "csv"))
TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES = envint("TOLLGATE_AUDIT_EXPORT_DELAY_MINUTES", 60, minimum=0)
# Retention in days (0 keeps everything); only exported (and shipped) events are deleted. On
# PostgreSQL whole partitions are dropped, once exported, shipped and covered by a signed anchor.
TOLLGATE_AUDIT_RETENTION_DAYS = envint("TOLLGATE_AUDIT_RETENTION_DAYS", 0, minimum=0)
# PostgreSQL partitions of the audit table (docs/deployment.md#partitioned-audit-table-and-retention):
# rows (events) per partition, and how many empty partitions the beat job keeps ready above the last event.
TOLLGATE_AUDIT_PARTITION_ROWS = envint("TOLLGATE_AUDIT_PARTITION_ROWS", 5_000_000, minimum=1)
TOLLGATE_AUDIT_PARTITIONS_AHEAD = envint("TOLLGATE_AUDIT_PARTITIONS_AHEAD", 2, minimum=1)
# HTTP sink to an external collector (empty URL disables it).
TOLLGATE_AUDIT_SINK_URL = envstr("TOLLGATE_AUDIT_SINK_URL", "")
TOLLGATE_AUDIT_SINK_AUTHORIZATION = envsecret("TOLLGATE_AUDIT_SINK_AUTHORIZATION") or ""
TOLLGATE_AUDIT_SINK_BATCH_SIZE = envint("TOLLGATE_AUDIT_SINK_BATCH_SIZE", 1000, minimum=1)
TOLLGATE_AUDIT_SINK_FLUSH_SECONDS = envfloat("TOLLGATE_AUDIT_SINK_FLUSH_SECONDS", 5.0, minimum=0.1)
TOLLGATE_AUDIT_SINK_RETRIES = envint("TOLLGATE_AUDIT_SINK_RETRIES", 3, minimum=0)
TOLLGATE_AUDIT_SINK_BACKOFF_SECONDS = envfloat("TOLLGATE_AUDIT_SINK_BACKOFF_SECONDS", 1.0, minimum=0)
TOLLGATE_AUDIT_SINK_TIMEOUT_SECONDS = envfloat("TOLLGATE_AUDIT_SINK_TIMEOUT_SECONDS", 10.0, minimum=0.1)
# Anchors (docs/audit.md#anchors): every so many seconds, the chain heads signed with the
# Ed25519 key in this file (PEM; `manage.py audit_anchor_key --generate FILE`), never in
# the database. Without a file, anchors are still numbered and linked, but unsigned.
TOLLGATE_AUDIT_ANCHOR_SECONDS = envfloat("TOLLGATE_AUDIT_ANCHOR_SECONDS", 300.0, minimum=10)
TOLLGATE_AUDIT_ANCHOR_KEY_FILE = envstr("TOLLGATE_AUDIT_ANCHOR_KEY_FILE", "")

CELERY_BEAT_SCHEDULE.update({
    # Both are idempotent and catch up, so running them often costs nothing.
    "audit-export-daily": {"task": "audit.tasks.audit_export_daily", "schedule": 15 * 60.0},
    "audit-retention": {"task": "audit.tasks.audit_retention", "schedule": 60 * 60.0},
    "audit-partitions": {"task": "audit.tasks.audit_partitions", "schedule": 15 * 60.0,
                         "options": {"expires": 15 * 60.0}},
    "audit-sink-flush": {"task": "audit.tasks.audit_sink_flush", "schedule": TOLLGATE_AUDIT_SINK_FLUSH_SECONDS},
    "audit-anchor": {"task": "audit.tasks.audit_anchor", "schedule": TOLLGATE_AUDIT_ANCHOR_SECONDS},
})

# --- Providers and routing (docs/providers.md) --------------------------------
# Circuit breaker per deployment: this many failures within the window open it
# for the cooldown; then one trial request decides. State lives in the shared cache.
TOLLGATE_BREAKER_FAILURES = envint("TOLLGATE_BREAKER_FAILURES", 5, minimum=1)
TOLLGATE_BREAKER_WINDOW_SECONDS = envint("TOLLGATE_BREAKER_WINDOW_SECONDS", 60, minimum=1)
TOLLGATE_BREAKER_COOLDOWN_SECONDS = envfloat("TOLLGATE_BREAKER_COOLDOWN_SECONDS", 30.0, minimum=0.1)
# A provider's Retry-After opens the breaker for that long, at most this long.
TOLLGATE_BREAKER_MAX_COOLDOWN_SECONDS = envfloat("TOLLGATE_BREAKER_MAX_COOLDOWN_SECONDS", 300.0, minimum=0.1)
# How stale a worker's copy of the breaker states may be (saves a cache round trip per request).
TOLLGATE_BREAKER_RECHECK_SECONDS = envfloat("TOLLGATE_BREAKER_RECHECK_SECONDS", 0.5, minimum=0)
# How often Celery beat runs the active health check; each provider is called at its own interval.
TOLLGATE_HEALTH_CHECK_TICK_SECONDS = envfloat("TOLLGATE_HEALTH_CHECK_TICK_SECONDS", 15.0, minimum=1)
CELERY_BEAT_SCHEDULE["proxy-health-check"] = {
    "task": "proxy.tasks.provider_health_check",
    "schedule": TOLLGATE_HEALTH_CHECK_TICK_SECONDS,
    "options": {"expires": TOLLGATE_HEALTH_CHECK_TICK_SECONDS},
}

# --- Provider credentials and key binding (docs/providers.md#credentials, docs/admin.md) ----------
# The only directory a provider's api_key_file may name (after following symlinks): keep provider
# keys there and nothing else, never DJANGO_SECRET_KEY_FILE's or the database password's file.
TOLLGATE_SECRETS_DIR = Path(envstr("TOLLGATE_SECRETS_DIR", str(BASE_DIR / "var" / "secrets")))
# A key first seen from a new network or client family raises a security alert: what it was seen
# from is remembered this long (shared cache), and one key alerts at most once per interval.
TOLLGATE_KEY_SEEN_DAYS = envint("TOLLGATE_KEY_SEEN_DAYS", 30, minimum=1)
TOLLGATE_KEY_ALERT_INTERVAL_SECONDS = envint("TOLLGATE_KEY_ALERT_INTERVAL_SECONDS", 3600, minimum=1)

# --- Operations: metrics and logs (docs/operations.md, docs/deployment.md) ---------------
# Reverse proxies whose X-Forwarded-For is believed (CIDRs); from anyone else it is ignored
# and the connection's own address is the client's (audit, per-address limits, /metrics).
TOLLGATE_TRUSTED_PROXIES = envlist("TOLLGATE_TRUSTED_PROXIES", [])
# Who may read GET /metrics: loopback and private networks by default; with a token set,
# a scraper must also send it as a bearer token.
TOLLGATE_METRICS_ALLOW = envlist("TOLLGATE_METRICS_ALLOW", [
    "127.0.0.0/8", "::1/128", "10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7"])
TOLLGATE_METRICS_TOKEN = envsecret("TOLLGATE_METRICS_TOKEN") or ""
# One series per consumer multiplies the request metrics; turn off for thousands of consumers.
TOLLGATE_METRICS_CONSUMER_LABELS = envbool("TOLLGATE_METRICS_CONSUMER_LABELS", True)
# How often each gateway worker writes its heartbeat to the shared cache (admin health page).
TOLLGATE_HEARTBEAT_SECONDS = envfloat("TOLLGATE_HEARTBEAT_SECONDS", 5.0, minimum=0.5)


def _validate_networks() -> None:
    from gateway_site.lib.clientaddr import parse_networks

    parse_networks(TOLLGATE_TRUSTED_PROXIES, setting="TOLLGATE_TRUSTED_PROXIES")
    parse_networks(TOLLGATE_METRICS_ALLOW, setting="TOLLGATE_METRICS_ALLOW")


_validate_networks()
# Celery logs through the LOGGING above instead of installing its own handlers.
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_IMPORTS: tuple[str, ...] = ("gateway_site.tasks",)
CELERY_BEAT_SCHEDULE["ops-heartbeat"] = {
    "task": "gateway_site.tasks.ops_heartbeat",
    "schedule": 30.0,
    "options": {"expires": 30.0},
}

# --- Admin portal and API (docs/admin.md) ---------------------------------------------
# The `gateway-admin` group gets every permission of these apps (audit.permissions.groups_ensure;
# the audit trail's own rows stay read-only); `compliance` gets audit read and export only.
TOLLGATE_GATEWAY_ADMIN_APPS = ("budgets", "proxy", "audit")
# OpenAPI 3 schema (drf-spectacular) with Swagger UI served from the sidecar package: no CDN.
INSTALLED_APPS += ["drf_spectacular", "drf_spectacular_sidecar"]
REST_FRAMEWORK.update({
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # Errors as {"error": {"message", "code", "fields"}}; bad input is a 400 naming the field.
    "EXCEPTION_HANDLER": "gateway_site.lib.api_errors.api_exception_handler",
    "DEFAULT_PARSER_CLASSES": [
        "gateway_site.lib.api_errors.JSONParser",
        "gateway_site.lib.api_errors.FormParser",
        "gateway_site.lib.api_errors.MultiPartParser",
    ],
    "DEFAULT_PAGINATION_CLASS": "gateway_site.lib.api_errors.Pagination",
    "PAGE_SIZE": 100,
})
SPECTACULAR_SETTINGS = {
    "TITLE": "Tollgate admin API",
    "DESCRIPTION": "Consumers, keys, budgets, rate limits, providers, routes, deployments, usage and the "
                   "audit log. Authenticate with `Authorization: Token <token>` (manage.py api_token <user>).",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    # The schema and docs, like the API, are for staff (token or admin session).
    "SERVE_PERMISSIONS": ["rest_framework.permissions.IsAdminUser"],
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": "/api/admin/",
}
# The usage dashboard adds up each closed day of the audit log once: audit.tasks.usage_rollup,
# registered under the name it had when it lived in gateway_site.dashboard.
CELERY_BEAT_SCHEDULE["dashboard-usage-rollup"] = {
    "task": "gateway_site.dashboard.usage_rollup",
    "schedule": 15 * 60.0,
    "options": {"expires": 15 * 60.0},
}

# --- Reliability and security (docs/reliability.md) ------------------------------------
# Probing defence (proxy/probing.py), per client address in the shared cache: failed
# authentications within the window are slowed past SLOW_AFTER (SLOW_SECONDS more per failure,
# at most 5 s) and answered 429 for BLOCK_SECONDS past BLOCK_AFTER.
TOLLGATE_PROBE_WINDOW_SECONDS = envint("TOLLGATE_PROBE_WINDOW_SECONDS", 600, minimum=1)
TOLLGATE_PROBE_SLOW_AFTER = envint("TOLLGATE_PROBE_SLOW_AFTER", 5, minimum=0)
TOLLGATE_PROBE_SLOW_SECONDS = envfloat("TOLLGATE_PROBE_SLOW_SECONDS", 0.2, minimum=0)
TOLLGATE_PROBE_BLOCK_AFTER = envint("TOLLGATE_PROBE_BLOCK_AFTER", 20, minimum=1)
TOLLGATE_PROBE_BLOCK_SECONDS = envint("TOLLGATE_PROBE_BLOCK_SECONDS", 900, minimum=1)
# Distinct model names refused to one address or key within the window that raise a security alert.
TOLLGATE_PROBE_MODEL_ALERT_AFTER = envint("TOLLGATE_PROBE_MODEL_ALERT_AFTER", 10, minimum=1)
# Security alerts are logged (logger tollgate.security) and POSTed here as JSON when set.
TOLLGATE_SECURITY_ALERT_WEBHOOK = envstr("TOLLGATE_SECURITY_ALERT_WEBHOOK", "")
# Gateway keys are blanked from every log line, whatever logger wrote it (a key in a URL).
LOGGING.setdefault("filters", {})["redact_keys"] = {"()": "gateway_site.lib.secretfilter.RedactKeys"}
for _handler in LOGGING["handlers"].values():
    _handler.setdefault("filters", []).append("redact_keys")
# Behind a TLS proxy (not in debug) the site is HTTPS only: plain-HTTP requests are redirected,
# except the health probes that load balancers send straight to the gateway, and browsers are
# told to keep to HTTPS (HSTS; SecurityMiddleware sends it on HTTPS responses only).
_TLS_ONLY = envbool("TOLLGATE_BEHIND_TLS_PROXY", False) and not DEBUG
SECURE_SSL_REDIRECT = envbool("DJANGO_SSL_REDIRECT", _TLS_ONLY)
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$"]
SECURE_HSTS_SECONDS = envint("DJANGO_HSTS_SECONDS", 31_536_000 if _TLS_ONLY else 0, minimum=0)
# No script of the admin reads the CSRF cookie (forms carry the token): keep it from scripts too.
CSRF_COOKIE_HTTPONLY = True
# Subdomains and the browsers' preload list are a decision for the whole domain, not for the
# gateway: off unless asked for, and `check --deploy` is told so rather than warning each time.
SECURE_HSTS_INCLUDE_SUBDOMAINS = envbool("DJANGO_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = envbool("DJANGO_HSTS_PRELOAD", False)
SILENCED_SYSTEM_CHECKS = ["security.W005", "security.W021"]

# --- Sign-in, API tokens and the admin history (issue #17; docs/admin.md) -------------------
INSTALLED_APPS += ["axes", "django_otp", "django_otp.plugins.otp_totp", "mozilla_django_oidc"]

# Admin API tokens: digests only, each with an expiry (days from issue) and a last-use time.
TOLLGATE_API_TOKEN_DAYS = envint("TOLLGATE_API_TOKEN_DAYS", 90, minimum=1)

# Sign-in lockout (django-axes) per (user name, client address) pair: a stranger who types an
# admin's name wrong from elsewhere locks out only themselves. The address is the one the rest
# of the gateway believes (TOLLGATE_TRUSTED_PROXIES), never a header a client may write.
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_FAILURE_LIMIT = envint("TOLLGATE_LOGIN_FAILURE_LIMIT", 5, minimum=1)
AXES_COOLOFF_TIME = envint("TOLLGATE_LOGIN_COOLOFF_MINUTES", 15, minimum=1) / 60  # hours, as axes counts
AXES_CLIENT_IP_CALLABLE = "gateway_site.auth_login.login_client_address"
AXES_WHITELIST_CALLABLE = "gateway_site.auth_login.login_by_sso"
AXES_RESET_ON_SUCCESS = True
AXES_ENABLE_ACCESS_FAILURE_LOG = True
AXES_HANDLER = "axes.handlers.database.AxesDatabaseHandler"  # attempts visible (and resettable) in the admin
AXES_VERBOSE = False  # no banner at each process start; lockouts are still logged as warnings
# Each sign-in is in its AccessLog table already; its info lines (a handful per sign-in) are noise.
LOGGING["loggers"]["axes"] = {"level": "WARNING"}

# Second factor for the admin: off, optional (who has a confirmed TOTP device must use it) or
# required (a superuser signs in with a password only together with a TOTP code).
TOLLGATE_ADMIN_OTP = envchoice("TOLLGATE_ADMIN_OTP", "off", ("off", "optional", "required"))
OTP_TOTP_ISSUER = envstr("TOLLGATE_OTP_ISSUER", "Tollgate")

# Single sign-on with OpenID Connect (mozilla-django-oidc): on when a client id is set. The
# endpoints come from the issuer's discovery document, or each is given.
TOLLGATE_OIDC_ISSUER = envstr("TOLLGATE_OIDC_ISSUER", "").rstrip("/")
OIDC_RP_CLIENT_ID = envstr("TOLLGATE_OIDC_CLIENT_ID", "")
OIDC_RP_CLIENT_SECRET = envsecret("TOLLGATE_OIDC_CLIENT_SECRET") or ""
OIDC_OP_AUTHORIZATION_ENDPOINT = envstr("TOLLGATE_OIDC_AUTHORIZATION_ENDPOINT", "")
OIDC_OP_TOKEN_ENDPOINT = envstr("TOLLGATE_OIDC_TOKEN_ENDPOINT", "")
OIDC_OP_USER_ENDPOINT = envstr("TOLLGATE_OIDC_USERINFO_ENDPOINT", "")
OIDC_OP_JWKS_ENDPOINT = envstr("TOLLGATE_OIDC_JWKS_ENDPOINT", "")
OIDC_RP_SIGN_ALGO = envchoice("TOLLGATE_OIDC_SIGN_ALGO", "rs256", ("rs256", "es256", "hs256")).upper()
OIDC_RP_SCOPES = envstr("TOLLGATE_OIDC_SCOPES", "openid email profile")
OIDC_USE_PKCE = True
OIDC_TIMEOUT = envfloat("TOLLGATE_OIDC_TIMEOUT_SECONDS", 10.0, minimum=0.1)
OIDC_USERNAME_ALGO = "gateway_site.auth_oidc.oidc_username"
LOGIN_REDIRECT_URL = "/admin/"
LOGIN_REDIRECT_URL_FAILURE = "/admin/login/?sso=failed"
TOLLGATE_OIDC_PROVIDER_NAME = envstr("TOLLGATE_OIDC_PROVIDER_NAME", "single sign-on")
TOLLGATE_OIDC_GROUPS_CLAIM = envstr("TOLLGATE_OIDC_GROUPS_CLAIM", "groups")
TOLLGATE_OIDC_ADMIN_GROUPS = envlist("TOLLGATE_OIDC_ADMIN_GROUPS", [])
TOLLGATE_OIDC_COMPLIANCE_GROUPS = envlist("TOLLGATE_OIDC_COMPLIANCE_GROUPS", [])
# Empty: single sign-on never makes a superuser, and refuses to sign one in.
TOLLGATE_OIDC_SUPERUSER_GROUPS = envlist("TOLLGATE_OIDC_SUPERUSER_GROUPS", [])
TOLLGATE_OIDC_ENABLED = bool(OIDC_RP_CLIENT_ID)
if TOLLGATE_OIDC_ENABLED and not (TOLLGATE_OIDC_ISSUER or (
        OIDC_OP_AUTHORIZATION_ENDPOINT and OIDC_OP_TOKEN_ENDPOINT and OIDC_OP_USER_ENDPOINT
        and (OIDC_OP_JWKS_ENDPOINT or OIDC_RP_SIGN_ALGO == "HS256"))):
    raise ImproperlyConfigured("TOLLGATE_OIDC_CLIENT_ID needs TOLLGATE_OIDC_ISSUER, or the authorization, token, "
                               "userinfo and JWKS endpoints (TOLLGATE_OIDC_*_ENDPOINT)")
# Local passwords may be turned off once single sign-on works (API tokens are unaffected).
TOLLGATE_ADMIN_PASSWORD_LOGIN = envbool("TOLLGATE_ADMIN_PASSWORD_LOGIN", True)
if not TOLLGATE_ADMIN_PASSWORD_LOGIN and not TOLLGATE_OIDC_ENABLED:
    raise ImproperlyConfigured("TOLLGATE_ADMIN_PASSWORD_LOGIN=false needs single sign-on (TOLLGATE_OIDC_CLIENT_ID)")

AUTHENTICATION_BACKENDS = [
    # First, as django-axes asks: refuses a locked-out (user, address) before any password is checked.
    "axes.backends.AxesStandaloneBackend",
    *(["gateway_site.auth_oidc.OIDCBackend"] if TOLLGATE_OIDC_ENABLED else []),
    *(["django.contrib.auth.backends.ModelBackend"] if TOLLGATE_ADMIN_PASSWORD_LOGIN else []),
]
