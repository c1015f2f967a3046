"""rest_framework.authtoken's tokens (plaintext) become hashed ApiTokens, and the plaintext rows go.

Scripts holding one keep working until it expires (TOLLGATE_API_TOKEN_DAYS from this migration).
The authtoken app is no longer installed, so its table is read with SQL, when it exists at all
(a new database never had it). Its rows are deleted, not just copied: a plaintext token left in
the database is what this replaces. The reverse step leaves the hashed tokens as they are.
"""
from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

from django.conf import settings
from django.db import migrations
from django.utils import timezone
from django.utils.dateparse import parse_datetime

LEGACY_TABLE = "authtoken_token"
LEGACY_PREFIX_LENGTH = 6  # of 40 hex characters: 136 bits stay secret


def _moment(value) -> datetime:
    """The row's `created` as SQL gave it: a datetime, or text (SQLite), or nothing."""
    if isinstance(value, str):
        value = parse_datetime(value)
    if not isinstance(value, datetime):
        return timezone.now()
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def hash_legacy_tokens(apps, schema_editor) -> None:
    connection = schema_editor.connection
    with connection.cursor() as cursor:
        if LEGACY_TABLE not in connection.introspection.table_names(cursor):
            return
        table = connection.ops.quote_name(LEGACY_TABLE)
        cursor.execute(f"SELECT {connection.ops.quote_name('key')}, created, user_id FROM {table}")  # noqa: S608
        rows = cursor.fetchall()
    ApiToken = apps.get_model("gateway_site", "ApiToken")
    expires_at = timezone.now() + timedelta(days=settings.TOLLGATE_API_TOKEN_DAYS)
    ApiToken.objects.using(connection.alias).bulk_create([
        ApiToken(user_id=user_id, name="from rest_framework.authtoken", prefix=key[:LEGACY_PREFIX_LENGTH],
                 digest=hashlib.sha256(key.encode()).hexdigest(), created_at=_moment(created),
                 expires_at=expires_at)
        for key, created, user_id in rows
    ], ignore_conflicts=True)
    with connection.cursor() as cursor:
        cursor.execute(f"DELETE FROM {table}")  # noqa: S608


class Migration(migrations.Migration):
    dependencies = [("gateway_site", "0001_api_tokens")]

    operations = [migrations.RunPython(hash_legacy_tokens, migrations.RunPython.noop)]
