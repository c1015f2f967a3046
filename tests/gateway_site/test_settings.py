from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from gateway_site.lib.env import envbool, envint, envsecret, parse_database_url
from tests.servers import ROOT


def test_it_parses_sqlite_and_postgres_urls(tmp_path: Path):
    sqlite = parse_database_url("sqlite:///var/x.sqlite3", base_dir=tmp_path)
    assert sqlite["ENGINE"] == "django.db.backends.sqlite3"
    assert sqlite["NAME"] == str(tmp_path / "var" / "x.sqlite3")
    absolute = parse_database_url("sqlite:////srv/db.sqlite3", base_dir=tmp_path)
    assert absolute["NAME"] == "/srv/db.sqlite3"
    pg = parse_database_url("postgres://u:p%40ss@db.internal:6543/gate?sslmode=require&pool_max_size=20",
                            base_dir=tmp_path)
    assert pg["ENGINE"] == "django.db.backends.postgresql"
    assert (pg["NAME"], pg["USER"], pg["PASSWORD"], pg["HOST"], pg["PORT"]) == (
        "gate", "u", "p@ss", "db.internal", "6543")
    assert pg["OPTIONS"]["sslmode"] == "require"
    assert pg["OPTIONS"]["pool"]["max_size"] == 20
    assert "pool" not in parse_database_url("postgres://h/db?pool=0", base_dir=tmp_path)["OPTIONS"]


@pytest.mark.parametrize("url", ["mysql://h/db", "postgres://h/", "sqlite://"])
def test_it_refuses_database_urls_it_cannot_use(url, tmp_path):
    with pytest.raises(ImproperlyConfigured):
        parse_database_url(url, base_dir=tmp_path)


def test_env_helpers_fail_loudly_on_bad_values(monkeypatch, tmp_path):
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured, match="X_BOOL"):
        envbool("X_BOOL")
    monkeypatch.setenv("X_INT", "ten")
    with pytest.raises(ImproperlyConfigured, match="X_INT"):
        envint("X_INT", 1)
    monkeypatch.setenv("X_INT", "-3")
    with pytest.raises(ImproperlyConfigured, match="at least"):
        envint("X_INT", 1, minimum=0)
    secret = tmp_path / "secret"
    secret.write_text("from-a-file\n")
    monkeypatch.setenv("X_SECRET_FILE", str(secret))
    assert envsecret("X_SECRET") == "from-a-file"


def _import_settings(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "PYTEST"))}
    clean.update(env)
    return subprocess.run(
        [sys.executable, "-c", "import django; django.setup(); print('ok')"],
        cwd=ROOT, env={**clean, "DJANGO_SETTINGS_MODULE": "gateway_site.settings"},
        capture_output=True, text=True, timeout=60,
    )


def test_production_settings_require_a_secret_key():
    result = _import_settings()
    assert result.returncode != 0
    assert "DJANGO_SECRET_KEY is required" in result.stderr
    assert _import_settings(DJANGO_DEBUG="1").stdout.strip() == "ok"
    assert _import_settings(DJANGO_SECRET_KEY="k" * 50).stdout.strip() == "ok"


def test_a_bad_setting_stops_the_process_with_its_name():
    result = _import_settings(DJANGO_SECRET_KEY="k" * 50, TOLLGATE_MAX_BODY_BYTES="lots")
    assert result.returncode != 0
    assert "TOLLGATE_MAX_BODY_BYTES" in result.stderr
