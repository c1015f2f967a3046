"""Admin API tokens: stored as digests, expiring, last use noted sparingly, issued once, rotated, revoked."""
from __future__ import annotations

import hashlib
import re
from datetime import timedelta
from io import StringIO

import pytest
import time_machine
from django.apps import apps
from django.contrib.admin.models import LogEntry
from django.contrib.auth.models import Group
from django.core.management import call_command
from django.db import connection
from django.urls import reverse
from django.utils import timezone
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_check, token_digest, token_issue, token_revoke
from gateway_site.models import ApiToken

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def gwen(django_user_model):
    user = django_user_model.objects.create_user("gwen", password="gwen-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="gateway-admin"))
    return user


def call(token: str, path: str = "/api/admin/consumers/"):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client.get(path)


def database_text() -> str:
    """Every token row and history row as text: where a leaked plaintext would show."""
    return repr(list(ApiToken.objects.values())) + repr(list(LogEntry.objects.values()))


def test_a_token_is_stored_as_a_digest_only(gwen):
    issued = token_issue(user=gwen, name="deploy")
    assert call(issued.plaintext).status_code == 200
    row = ApiToken.objects.get()
    assert row.digest == hashlib.sha256(issued.plaintext.encode()).hexdigest()
    assert issued.plaintext.startswith(row.prefix) and len(row.prefix) == 12
    assert issued.plaintext not in database_text()
    assert issued.plaintext[12:] not in database_text()


def test_a_token_expires(gwen, settings):
    settings.TOLLGATE_API_TOKEN_DAYS = 30
    issued = token_issue(user=gwen)
    assert issued.token.expires_at == issued.token.created_at + timedelta(days=30)
    with time_machine.travel(issued.token.expires_at - timedelta(seconds=1), tick=False):
        assert call(issued.plaintext).status_code == 200
    with time_machine.travel(issued.token.expires_at, tick=False):
        response = call(issued.plaintext)
    assert response.status_code == 401 and "expired" in response.json()["error"]["message"]


def test_last_use_is_written_at_most_once_a_minute(gwen, django_assert_num_queries):
    issued = token_issue(user=gwen)
    start = timezone.now()
    with time_machine.travel(start, tick=False):
        call(issued.plaintext)
    assert ApiToken.objects.get().last_used_at == start
    with time_machine.travel(start + timedelta(seconds=59), tick=False):
        with django_assert_num_queries(1):  # the lookup; no UPDATE
            token_check(issued.plaintext)
    assert ApiToken.objects.get().last_used_at == start
    with time_machine.travel(start + timedelta(seconds=61), tick=False):
        call(issued.plaintext)
    assert ApiToken.objects.get().last_used_at == start + timedelta(seconds=61)


def test_revoked_unknown_and_inactive_users_tokens_get_401(gwen):
    revoked = token_issue(user=gwen)
    token_revoke(token=revoked.token)
    assert call(revoked.plaintext).status_code == 401
    assert call("tgadm_" + "x" * 43).status_code == 401
    live = token_issue(user=gwen)
    gwen.is_active = False
    gwen.save()
    assert call(live.plaintext).status_code == 401


def test_the_command_prints_a_working_token_and_can_revoke_the_others(gwen):
    first = StringIO()
    call_command("api_token", "gwen", "--name", "ci", "--days", "7", stdout=first)
    token = first.getvalue().strip()
    assert call(token).status_code == 200
    assert ApiToken.objects.get().name == "ci"
    second = StringIO()
    call_command("drf_create_token", "gwen", "-r", stdout=second)  # DRF's command line, kept for old scripts
    match = re.fullmatch(r"Generated token (\S+) for user gwen\n", second.getvalue())
    assert match and call(match.group(1)).status_code == 200
    assert call(token).status_code == 401


def test_the_admin_issues_a_token_once_and_rotates_and_revokes(client, personas, gwen):
    client.force_login(personas.admin)
    response = client.post(reverse("admin:gateway_site_apitoken_add"), {"user": gwen.pk, "name": "laptop",
                                                                         "days": "10"})
    assert response.status_code == 200 and "no-store" in response["Cache-Control"]
    plaintext = re.search(r'value="(tgadm_[A-Za-z0-9_-]+)"', response.content.decode()).group(1)
    token = ApiToken.objects.get(name="laptop")
    assert token.digest == token_digest(plaintext) and call(plaintext).status_code == 200
    assert token.expires_at - token.created_at == timedelta(days=10)
    for url in (reverse("admin:gateway_site_apitoken_change", args=[token.pk]),
                reverse("admin:gateway_site_apitoken_changelist")):
        assert plaintext not in client.get(url).content.decode()

    rotated = client.post(reverse("admin:gateway_site_apitoken_changelist"),
                          {"action": "rotate_tokens", "_selected_action": [token.pk]})
    successor = re.search(r'value="(tgadm_[A-Za-z0-9_-]+)"', rotated.content.decode()).group(1)
    assert call(plaintext).status_code == 401 and call(successor).status_code == 200
    new = ApiToken.objects.get(digest=token_digest(successor))
    client.post(reverse("admin:gateway_site_apitoken_changelist"),
                {"action": "revoke_tokens", "_selected_action": [new.pk]})
    assert call(successor).status_code == 401
    messages = list(LogEntry.objects.filter(user=personas.admin).order_by("id").values_list("change_message",
                                                                                          flat=True))
    assert messages[0] == '[{"added": {}}]' and messages[1].startswith("Rotated") and messages[-1] == "Revoked."
    assert plaintext not in database_text() and successor not in database_text()


def test_only_superusers_manage_tokens_in_the_admin(client, gwen):
    client.force_login(gwen)  # gateway-admin, not superuser
    assert client.get(reverse("admin:gateway_site_apitoken_changelist")).status_code == 403


def test_the_migration_hashes_drf_tokens_and_deletes_the_plaintext(gwen, settings):
    """A database upgraded from rest_framework.authtoken: its tokens keep working, hashed."""
    from importlib import import_module

    migration = import_module("gateway_site.migrations.0002_hash_authtoken_tokens")
    legacy = "0123456789abcdef0123456789abcdef01234567"
    with connection.cursor() as cursor:
        cursor.execute('CREATE TABLE authtoken_token ("key" varchar(40) PRIMARY KEY, created timestamp with time '
                       'zone NOT NULL, user_id integer NOT NULL)' if connection.vendor == "postgresql" else
                       'CREATE TABLE authtoken_token ("key" varchar(40) PRIMARY KEY, created datetime NOT NULL, '
                       'user_id integer NOT NULL)')
        cursor.execute('INSERT INTO authtoken_token ("key", created, user_id) VALUES (%s, %s, %s)',
                       [legacy, timezone.now() - timedelta(days=400), gwen.pk])
    with connection.schema_editor() as editor:
        migration.hash_legacy_tokens(apps, editor)
    with connection.cursor() as cursor:
        cursor.execute("SELECT COUNT(*) FROM authtoken_token")
        assert cursor.fetchone()[0] == 0
    token = ApiToken.objects.get()
    assert token.digest == token_digest(legacy) and token.prefix == legacy[:6] and token.user == gwen
    assert token.expires_at > timezone.now() + timedelta(days=settings.TOLLGATE_API_TOKEN_DAYS - 1)
    assert call(legacy).status_code == 200
    assert legacy not in database_text()
