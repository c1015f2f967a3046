"""Admin hardening (issue 8; docs/reliability.md): CSRF enforced, cookies Secure and HttpOnly in
production, `check --deploy` clean with production settings, the compliance group cannot escalate."""
from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group, Permission
from django.test import Client
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_issue

pytestmark = pytest.mark.django_db
ROOT = Path(__file__).resolve().parents[2]
PRODUCTION_ENV = {"DJANGO_DEBUG": "0", "TOLLGATE_BEHIND_TLS_PROXY": "1",
                  "TOLLGATE_AUDIT_CHAIN_KEY": "tests-only-audit-chain-key-not-for-production"}


@pytest.fixture(autouse=True)
def fast_passwords(settings) -> None:
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]


@pytest.fixture
def compliance(personas):
    personas.compliance.groups.add(Group.objects.get(name="compliance"))
    return personas.compliance


def test_the_admin_login_refuses_a_post_without_a_csrf_token(personas):
    client = Client(enforce_csrf_checks=True)
    response = client.post("/admin/login/", {"username": "ada", "password": "ada-password-1"})
    assert response.status_code == 403
    assert "_auth_user_id" not in client.session


def test_the_admin_login_accepts_the_token_from_its_own_form(personas):
    client = Client(enforce_csrf_checks=True)
    token = client.get("/admin/login/").context["csrf_token"]
    response = client.post("/admin/login/", {"username": "ada", "password": "ada-password-1",
                                              "csrfmiddlewaretoken": token, "next": "/admin/"})
    assert response.status_code == 302 and client.session["_auth_user_id"] == str(personas.admin.pk)


def test_a_change_form_refuses_a_post_without_a_csrf_token(personas):
    client = Client(enforce_csrf_checks=True)
    client.force_login(personas.admin)
    url = f"/admin/budgets/consumer/{personas.bob.pk}/change/"
    assert client.get(url).status_code == 200
    response = client.post(url, {"name": "renamed", "description": "x"})
    assert response.status_code == 403
    personas.bob.refresh_from_db()
    assert personas.bob.name == "bob-batch"


def test_session_and_csrf_cookies_are_secure_and_http_only_in_production(personas, settings):
    # The production values, computed by gateway_site/settings.py with debug off (as in tests).
    assert settings.SESSION_COOKIE_SECURE and settings.CSRF_COOKIE_SECURE
    assert settings.SESSION_COOKIE_HTTPONLY and settings.CSRF_COOKIE_HTTPONLY
    client = Client(enforce_csrf_checks=True)
    token = client.get("/admin/login/").context["csrf_token"]
    response = client.post("/admin/login/", {"username": "ada", "password": "ada-password-1",
                                              "csrfmiddlewaretoken": token, "next": "/admin/"})
    for name in ("sessionid", "csrftoken"):
        cookie = response.cookies[name]
        assert cookie["secure"] is True and cookie["httponly"] is True, name


def production_settings(*args: str, **extra: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "TOLLGATE_"))}
    env.update(PRODUCTION_ENV, DJANGO_SECRET_KEY=secrets.token_urlsafe(60),
               DJANGO_SETTINGS_MODULE="gateway_site.settings", **extra)
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=60)


def test_check_deploy_is_clean_with_production_settings():
    result = production_settings("manage.py", "check", "--deploy", "--fail-level", "WARNING")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


def test_production_settings_redirect_to_https_but_not_the_health_probes():
    result = production_settings(
        "-c", "import django; django.setup(); from django.conf import settings as s; "
        "print(s.SECURE_SSL_REDIRECT, s.SECURE_HSTS_SECONDS, *s.SECURE_REDIRECT_EXEMPT, s.SESSION_COOKIE_SECURE)")
    assert result.stdout.split() == ["True", "31536000", "^healthz$", "^readyz$", "True"], result.stderr


def test_compliance_has_no_permission_over_users_groups_or_permissions(compliance):
    granted = Permission.objects.filter(group__name="compliance", content_type__app_label="auth")
    assert not granted.exclude(codename__startswith="view_").exists()
    assert not compliance.has_perm("auth.add_user") and not compliance.has_perm("auth.change_group")


def test_compliance_cannot_escalate_in_the_admin(client, compliance):
    client.force_login(compliance)
    group = Group.objects.get(name="compliance")
    everything = [str(p.pk) for p in Permission.objects.all()]
    attempts = [
        ("/admin/auth/user/add/", {"username": "mallory", "password1": "Xx-long-pass-99",
                                   "password2": "Xx-long-pass-99"}),
        (f"/admin/auth/user/{compliance.pk}/change/", {"username": "carl", "is_superuser": "on",
                                                       "is_staff": "on", "user_permissions": everything}),
        (f"/admin/auth/group/{group.pk}/change/", {"name": "compliance", "permissions": everything}),
        ("/admin/auth/group/add/", {"name": "mine", "permissions": everything}),
    ]
    for url, data in attempts:
        assert client.get(url).status_code in (403, 404), url
        assert client.post(url, data).status_code in (403, 404), url
    compliance.refresh_from_db()
    assert not compliance.is_superuser
    assert not compliance.user_permissions.exists()
    assert group.permissions.count() == Group.objects.get(name="compliance").permissions.count()
    assert not get_user_model().objects.filter(username="mallory").exists()
    assert not Group.objects.filter(name="mine").exists()


def test_compliance_cannot_escalate_through_the_admin_api(compliance):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=compliance).plaintext}")
    for path in ("users", "groups", "permissions", f"users/{compliance.pk}"):
        for method in (client.post, client.patch, client.put):
            assert method(f"/api/admin/{path}/", {"is_superuser": True}, format="json").status_code in (
                403, 404, 405), path
    compliance.refresh_from_db()
    assert not compliance.is_superuser
