from __future__ import annotations

from datetime import timedelta

import pytest
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from budgets.models import ApiKey
from tests.proxy.client import call, chat

HELLO = {"model": "demo", "messages": [{"role": "user", "content": "hello"}]}


def assert_openai_401(response) -> None:
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"]
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.django_db
def test_it_rejects_a_request_without_a_key(personas, demo_route):
    response = chat(None, HELLO)
    assert_openai_401(response)
    assert response.json()["error"]["code"] == "missing_api_key"


@pytest.mark.django_db
def test_it_rejects_unknown_revoked_and_expired_keys_alike(personas, demo_route):
    expired = ApiKey.objects.filter(consumer=personas.bob).get()
    expired.expires_at = timezone.now() - timedelta(seconds=1)
    expired.save()
    bodies = []
    for key in ("tg-not-a-real-key", personas.revoked_key, personas.bob_key):
        response = chat(key, HELLO)
        assert_openai_401(response)
        bodies.append(response.json())
    # A scanner cannot tell which of the three it hit.
    assert bodies[0] == bodies[1] == bodies[2]


@pytest.mark.django_db
def test_it_rejects_keys_of_an_inactive_consumer(personas, demo_route):
    personas.alice.active = False
    personas.alice.save()
    assert_openai_401(chat(personas.alice_key, HELLO))


@pytest.mark.django_db
@pytest.mark.parametrize("header", ["X-Api-Key", "X-App-Key"])
def test_it_accepts_the_key_in_other_headers(personas, demo_route, header):
    response = call("POST", "/v1/chat/completions", body=HELLO, headers={header: personas.alice_key})
    assert response.status_code == 200, response.content


@pytest.mark.django_db
def test_it_reads_nothing_from_the_database_for_a_cached_key(personas, demo_route):
    assert chat(personas.alice_key, HELLO).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        response = chat(personas.alice_key, HELLO)
    assert response.status_code == 200
    # The audit event is written (issue #5); nothing else touches the database.
    audit = ("audit_", "SAVEPOINT")
    assert [q["sql"] for q in queries.captured_queries if not any(a in q["sql"] for a in audit)] == []


@pytest.mark.django_db
def test_it_sees_a_revocation_through_the_cache(personas, demo_route, django_capture_on_commit_callbacks):
    from budgets.keys import key_revoke

    assert chat(personas.alice_key, HELLO).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        key_revoke(key=ApiKey.objects.get(consumer=personas.alice, name="laptop"))
    assert_openai_401(chat(personas.alice_key, HELLO))


@pytest.mark.django_db
def test_unknown_v1_paths_ask_for_a_key_first(personas):
    assert_openai_401(call("POST", "/v1/completions", body={"model": "x"}))
    response = call("POST", "/v1/completions", key=personas.alice_key, body={"model": "x"})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_endpoint"
