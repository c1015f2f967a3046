"""Provider credential references are confined, and only some may choose them (issue #17;
docs/providers.md#credentials)."""
from __future__ import annotations

import io
import logging
import re
import textwrap
from pathlib import Path

import pytest
from django.contrib.admin.models import LogEntry
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client
from rest_framework.test import APIClient

from gateway_site.auth_tokens import token_issue
from proxy.credentials import env_problem
from proxy.models import Provider
from proxy.services import provider_check

pytestmark = pytest.mark.django_db

PREFIX_MESSAGE = ("api_key_env must start with TOLLGATE_PROVIDER_ (rename OPENAI_API_KEY to "
                  "TOLLGATE_PROVIDER_OPENAI_API_KEY); see docs/providers.md#credentials")


@pytest.fixture(autouse=True)
def secrets_dir(settings, tmp_path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    settings.TOLLGATE_SECRETS_DIR = directory
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    return directory


@pytest.fixture
def gwen(db):
    """A gateway-admin: may change everything in the gateway, except where its secrets go."""
    user = get_user_model().objects.create_user("gwen", "gwen@example.com", "gwen-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="gateway-admin"))
    return user


@pytest.fixture
def provider(db) -> Provider:
    return Provider.objects.create(name="openai-main", kind="openai", base_url="https://api.openai.com/v1",
                                   api_key_env="TOLLGATE_PROVIDER_OPENAI_API_KEY")


def api_as(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user).plaintext}")
    return client


# --- The rules ----------------------------------------------------------------------------------


def test_the_prefix_message_says_how_to_rename():
    assert env_problem("OPENAI_API_KEY") == PREFIX_MESSAGE
    assert env_problem("TOLLGATE_PROVIDER_OPENAI_API_KEY") is None
    assert env_problem("TOLLGATE_PROVIDER_") is not None


@pytest.mark.parametrize("name", ["DATABASE_URL", "DJANGO_SECRET_KEY", "TOLLGATE_AUDIT_CHAIN_KEY", "REDIS_URL"])
def test_the_model_refuses_a_variable_without_the_prefix(name):
    with pytest.raises(ValidationError) as info:
        Provider(name="p", kind="openai", base_url="https://x.example/v1", api_key_env=name).full_clean()
    assert "must start with TOLLGATE_PROVIDER_" in str(info.value.message_dict["api_key_env"])


def test_a_file_outside_the_secrets_dir_is_refused(secrets_dir):
    for reference in ("/etc/passwd", str(secrets_dir / ".." / "elsewhere"), "../elsewhere", str(secrets_dir)):
        with pytest.raises(ValidationError) as info:
            Provider(name="p", kind="openai", base_url="https://x.example/v1", api_key_file=reference).full_clean()
        assert "inside TOLLGATE_SECRETS_DIR" in str(info.value.message_dict["api_key_file"]), reference


def test_a_file_inside_the_secrets_dir_is_read_by_absolute_or_relative_name(secrets_dir):
    (secrets_dir / "openai").write_text("sk-from-file\n")
    for reference in ("openai", str(secrets_dir / "openai")):
        provider = Provider(name="p", kind="openai", base_url="https://x.example/v1", api_key_file=reference)
        provider.full_clean()
        assert provider.read_credential() == "sk-from-file"


def test_a_symlink_out_of_the_secrets_dir_is_refused_when_saved_and_when_read(secrets_dir, tmp_path, caplog):
    outside = tmp_path / "django-secret-key"
    outside.write_text("the-django-secret")
    (secrets_dir / "innocent").symlink_to(outside)
    with pytest.raises(ValidationError):
        Provider(name="p", kind="openai", base_url="https://x.example/v1", api_key_file="innocent").full_clean()
    # A row written around validation (an old row, a queryset update) is refused at every read.
    provider = Provider.objects.create(name="p", kind="openai", base_url="https://x.example/v1",
                                       api_key_file="innocent")
    with caplog.at_level(logging.ERROR, logger="tollgate.security"):
        assert provider.read_credential() == ""
    assert "credential reference refused" in caplog.text and "the-django-secret" not in caplog.text


def test_a_symlink_within_the_secrets_dir_is_followed(secrets_dir):
    (secrets_dir / "..data").mkdir()
    (secrets_dir / "..data" / "openai").write_text("sk-kubernetes-style")
    (secrets_dir / "openai").symlink_to(secrets_dir / "..data" / "openai")  # how Kubernetes mounts secrets
    assert Provider(name="p", api_key_file="openai").read_credential() == "sk-kubernetes-style"


def test_an_old_row_naming_another_secret_gets_no_credential(provider, monkeypatch, caplog, sandbox_url):
    monkeypatch.setenv("DJANGO_SECRET_KEY", "the-django-secret")
    Provider.objects.filter(pk=provider.pk).update(api_key_env="DJANGO_SECRET_KEY", base_url=f"{sandbox_url}/v1")
    provider.refresh_from_db()
    with caplog.at_level(logging.ERROR, logger="tollgate.security"):
        assert provider.read_credential() == ""
        provider_check(provider=provider)  # the health check sends no credential either
    assert "must start with TOLLGATE_PROVIDER_" in caplog.text
    assert "the-django-secret" not in caplog.text


# --- The permission, in the admin API -------------------------------------------------------------


def test_the_groups_grant_the_permission_to_gateway_credentials_only():
    def codenames(group: str) -> set[str]:
        return set(Group.objects.get(name=group).permissions.values_list("codename", flat=True))

    assert "change_provider_credentials" not in codenames("gateway-admin")
    assert "change_provider" in codenames("gateway-admin")
    assert codenames("gateway-credentials") == {"change_provider_credentials"}


def test_a_gateway_admin_cannot_point_a_provider_at_another_secret(gwen, provider):
    client = api_as(gwen)
    for change in ({"api_key_env": "DATABASE_URL"}, {"base_url": "https://attacker.example/v1"},
                   {"api_key_file": "/etc/tollgate/secret-key"}):
        response = client.patch(f"/api/admin/providers/{provider.pk}/", change, format="json")
        assert response.status_code == 403, response.content
        assert "proxy.change_provider_credentials" in response.json()["error"]["message"]
    created = client.post("/api/admin/providers/", {"name": "mine", "kind": "openai",
                                                    "base_url": "https://attacker.example/v1"}, format="json")
    assert created.status_code == 403
    provider.refresh_from_db()
    assert (provider.api_key_env, provider.base_url) == ("TOLLGATE_PROVIDER_OPENAI_API_KEY",
                                                         "https://api.openai.com/v1")
    assert not Provider.objects.filter(name="mine").exists()


def test_a_gateway_admin_still_changes_the_other_fields(gwen, provider):
    response = api_as(gwen).put(f"/api/admin/providers/{provider.pk}/", {
        "name": "openai-main", "kind": "openai", "base_url": "https://api.openai.com/v1",
        "api_key_env": "TOLLGATE_PROVIDER_OPENAI_API_KEY", "timeout_seconds": 20}, format="json")
    assert response.status_code == 200, response.content
    assert Provider.objects.get(pk=provider.pk).timeout_seconds == 20


def test_the_permission_still_does_not_allow_another_secret(gwen, provider):
    gwen.groups.add(Group.objects.get(name="gateway-credentials"))
    response = api_as(gwen).patch(f"/api/admin/providers/{provider.pk}/", {"api_key_env": "DATABASE_URL"},
                                  format="json")
    assert response.status_code == 400
    assert "api_key_env: api_key_env must start with TOLLGATE_PROVIDER_" in response.json()["error"]["message"]


def test_a_superuser_changing_base_url_is_logged_and_in_the_admin_history(personas, provider, caplog):
    with caplog.at_level(logging.WARNING, logger="tollgate.security"):
        response = api_as(personas.admin).patch(f"/api/admin/providers/{provider.pk}/",
                                                {"base_url": "https://user:pw@eu.api.openai.com/v1"}, format="json")
    assert response.status_code == 200, response.content
    line = next(r.getMessage() for r in caplog.records if r.name == "tollgate.security")
    assert "openai-main" in line and "by ada via admin API" in line
    assert "'https://api.openai.com/v1' → 'https://***@eu.api.openai.com/v1'" in line and "pw" not in line
    # Two history entries: the API's change (fields) and the credential record (old → new values).
    entry = LogEntry.objects.get(object_id=str(provider.pk), user=personas.admin,
                                 change_message__startswith="Credential reference")
    assert entry.is_change() and "base_url 'https://api.openai.com/v1' → " in entry.get_change_message()


def test_a_holder_of_the_permission_creates_a_provider_and_it_is_recorded(gwen):
    gwen.groups.add(Group.objects.get(name="gateway-credentials"))
    response = api_as(gwen).post("/api/admin/providers/", {
        "name": "anthropic-main", "kind": "anthropic", "base_url": "https://api.anthropic.com",
        "api_key_file": "anthropic"}, format="json")
    assert response.status_code == 201, response.content
    entry = LogEntry.objects.get(user=gwen, change_message__startswith="Credential reference")
    assert entry.is_addition() and "api_key_file (none) → 'anthropic'" in entry.get_change_message()


# --- The permission, in the admin ------------------------------------------------------------------


def test_the_admin_shows_a_gateway_admin_the_guarded_fields_read_only(gwen, provider):
    client = Client()
    client.force_login(gwen)
    page = client.get(f"/admin/proxy/provider/{provider.pk}/change/").content.decode()
    assert 'name="timeout_seconds"' in page
    assert 'name="base_url"' not in page and 'name="api_key_env"' not in page and 'name="api_key_file"' not in page
    assert client.get("/admin/proxy/provider/add/").status_code == 403
    response = client.post(f"/admin/proxy/provider/{provider.pk}/change/", {
        "name": "openai-main", "kind": "openai", "base_url": "https://attacker.example/v1",
        "api_key_env": "TOLLGATE_PROVIDER_OPENAI_API_KEY", "extra_headers": "{}", "timeout_seconds": "30",
        "connect_timeout_seconds": "5", "enabled": "on", "health_check_interval_seconds": "60"})
    assert response.status_code == 302
    provider.refresh_from_db()
    assert (provider.base_url, provider.timeout_seconds) == ("https://api.openai.com/v1", 30)


def test_a_superuser_changes_them_in_the_admin_and_it_is_logged(personas, provider, caplog):
    client = Client()
    client.force_login(personas.admin)
    with caplog.at_level(logging.WARNING, logger="tollgate.security"):
        response = client.post(f"/admin/proxy/provider/{provider.pk}/change/", {
            "name": "openai-main", "kind": "openai", "base_url": "https://api.openai.com/v1",
            "api_key_env": "TOLLGATE_PROVIDER_OPENAI_EU", "extra_headers": "{}", "timeout_seconds": "60",
            "connect_timeout_seconds": "5", "enabled": "on", "health_check_interval_seconds": "60"})
    assert response.status_code == 302
    assert "api_key_env 'TOLLGATE_PROVIDER_OPENAI_API_KEY' → 'TOLLGATE_PROVIDER_OPENAI_EU'" in caplog.text
    assert "by ada via admin" in caplog.text
    messages = [e.get_change_message() for e in LogEntry.objects.filter(object_id=str(provider.pk))]
    assert any("Credential reference changed via admin: api_key_env" in m for m in messages), messages


# --- gateway_apply ---------------------------------------------------------------------------------

FILE = """\
providers:
  - name: openai-main
    kind: openai
    base_url: https://api.openai.com/v1
    api_key_env: {env}
"""


def apply(tmp_path: Path, text: str, *args: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    out = io.StringIO()
    call_command("gateway_apply", str(path), *args, stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_gateway_apply_explains_a_variable_without_the_prefix(tmp_path):
    with pytest.raises(CommandError) as info:
        apply(tmp_path, FILE.format(env="OPENAI_API_KEY"), "--allow-credentials")
    assert f"gateway.yaml:5: {PREFIX_MESSAGE}" in str(info.value)
    assert not Provider.objects.exists()


def test_gateway_apply_refuses_a_new_provider_without_allow_credentials(tmp_path):
    for args in ((), ("--dry-run",)):
        with pytest.raises(CommandError) as info:
            apply(tmp_path, FILE.format(env="TOLLGATE_PROVIDER_OPENAI_API_KEY"), *args)
        message = str(info.value)
        assert "gateway.yaml:2: new provider 'openai-main'" in message and "--allow-credentials" in message
    assert not Provider.objects.exists()


def test_gateway_apply_refuses_a_changed_reference_without_allow_credentials(tmp_path, provider, caplog):
    text = FILE.format(env="TOLLGATE_PROVIDER_OPENAI_EU")
    with pytest.raises(CommandError) as info:
        apply(tmp_path, text)
    assert "provider 'openai-main' changes api_key_env" in str(info.value)
    assert Provider.objects.get().api_key_env == "TOLLGATE_PROVIDER_OPENAI_API_KEY"
    # Other fields need no flag.
    apply(tmp_path, text.replace("TOLLGATE_PROVIDER_OPENAI_EU", "TOLLGATE_PROVIDER_OPENAI_API_KEY")
          + "    timeout_seconds: 30\n")
    with caplog.at_level(logging.WARNING, logger="tollgate.security"):
        output = apply(tmp_path, text, "--allow-credentials")
    assert "~ provider openai-main: api_key_env" in output
    assert Provider.objects.get().api_key_env == "TOLLGATE_PROVIDER_OPENAI_EU"
    assert "via gateway_apply" in caplog.text and "by os:" in caplog.text


def test_the_migration_lists_providers_that_break_the_rules(provider, capsys):
    from importlib import import_module

    from django.apps import apps

    Provider.objects.filter(pk=provider.pk).update(api_key_env="OPENAI_API_KEY")
    migration = import_module("proxy.migrations.0004_provider_credential_rules")
    migration.report_references(apps, type("Editor", (), {"connection": type("C", (), {"alias": "default"})}))
    assert f"provider openai-main: {PREFIX_MESSAGE}" in capsys.readouterr().out


def test_no_example_in_the_docs_names_a_variable_without_the_prefix():
    root = Path(__file__).resolve().parents[2]
    named = re.compile(r'api_key_env"?\s*[:=]\s*"?([A-Za-z_][A-Za-z0-9_]*)')
    found = []
    for path in [*root.glob("docs/**/*.md"), *root.glob("docs/**/*.yaml"), root / "README.md"]:
        found += [(path.name, name) for name in named.findall(path.read_text())]
    assert found and all(name.startswith("TOLLGATE_PROVIDER_") for _, name in found), found
