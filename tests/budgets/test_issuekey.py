from __future__ import annotations

import hashlib
import io
from datetime import UTC, datetime, timedelta

import pytest
import time_machine
from django.core.management import CommandError, call_command

from budgets.models import ApiKey, Consumer

pytestmark = pytest.mark.django_db


@pytest.fixture
def consumer() -> Consumer:
    return Consumer.objects.create(name="production-agent")


def issue(*args: str) -> tuple[str, str]:
    out, err = io.StringIO(), io.StringIO()
    call_command("issuekey", *args, stdout=out, stderr=err)
    return out.getvalue(), err.getvalue()


def test_it_prints_exactly_one_key_whose_digest_is_stored(consumer: Consumer) -> None:
    out, err = issue("production-agent")

    assert out.count("\n") == 1 and out.endswith("\n")
    plaintext = out.strip()
    assert plaintext.startswith("tg-") and len(plaintext) >= 40
    key = ApiKey.objects.get(digest=hashlib.sha256(plaintext.encode()).hexdigest())
    assert key.consumer == consumer
    assert key.prefix == plaintext[: len(key.prefix)]
    assert (key.expires_at, key.allowed_routes, key.name) == (None, [], "")
    assert plaintext not in err
    assert f"{key.prefix}…" in err and "not shown again" in err


def test_it_issues_a_new_key_each_time(consumer: Consumer) -> None:
    first, _ = issue("production-agent")
    second, _ = issue("production-agent")

    assert first != second
    assert consumer.keys.count() == 2


def test_it_sets_expiry_name_and_routes(consumer: Consumer) -> None:
    now = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
    with time_machine.travel(now, tick=False):
        out, err = issue(
            "production-agent", "--expires-days", "30", "--name", "ci-runner", "--routes", "smart, fast,smart"
        )

    key = ApiKey.objects.get(digest=hashlib.sha256(out.strip().encode()).hexdigest())
    assert key.expires_at == now + timedelta(days=30)
    assert key.name == "ci-runner"
    assert key.allowed_routes == ["smart", "fast"]
    assert "expires 2026-03-31 12:00 UTC" in err


def test_it_fails_for_an_unknown_consumer() -> None:
    out = io.StringIO()
    with pytest.raises(CommandError, match="No consumer named 'nobody'"):
        call_command("issuekey", "nobody", stdout=out, stderr=io.StringIO())

    assert out.getvalue() == ""
    assert not ApiKey.objects.exists()


def test_it_refuses_a_non_positive_expiry(consumer: Consumer) -> None:
    with pytest.raises(CommandError, match="at least 1"):
        issue("production-agent", "--expires-days", "0")

    assert not ApiKey.objects.exists()


def test_it_warns_on_stderr_when_the_consumer_is_inactive() -> None:
    Consumer.objects.create(name="paused", active=False)

    out, err = issue("paused")

    assert out.strip().startswith("tg-") and out.count("\n") == 1
    assert "inactive" in err
