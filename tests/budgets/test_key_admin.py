from __future__ import annotations

import re

import pytest
from django.urls import reverse

from budgets.keys import key_digest
from budgets.models import ApiKey
from tests.proxy.client import chat


@pytest.mark.django_db
def test_issuing_a_key_in_the_admin_shows_the_plaintext_once(client, personas):
    client.force_login(personas.admin)
    response = client.post(reverse("admin:budgets_apikey_add"),
                           {"consumer": personas.bob.pk, "name": "from-admin", "allowed_routes": "[]"})
    assert response.status_code == 200
    assert "no-store" in response["Cache-Control"]
    page = response.content.decode()
    plaintext = re.search(r'value="(tg-[A-Za-z0-9_-]+)"', page).group(1)
    key = ApiKey.objects.get(name="from-admin")
    assert key.digest == key_digest(plaintext)
    assert key.prefix == plaintext[:10]
    # Never again: not on the change page, not in the list.
    for url in (reverse("admin:budgets_apikey_change", args=[key.pk]), reverse("admin:budgets_apikey_changelist")):
        assert plaintext not in client.get(url).content.decode()


@pytest.mark.django_db
def test_revoking_keys_with_the_admin_action(client, personas, demo_route, django_capture_on_commit_callbacks):
    client.force_login(personas.admin)
    hello = {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}
    assert chat(personas.bob_key, hello).status_code == 200
    key = ApiKey.objects.get(consumer=personas.bob)
    with django_capture_on_commit_callbacks(execute=True):
        client.post(reverse("admin:budgets_apikey_changelist"),
                    {"action": "revoke_keys", "_selected_action": [key.pk]})
    key.refresh_from_db()
    assert key.status == "revoked"
    assert chat(personas.bob_key, hello).status_code == 401


@pytest.mark.django_db
def test_a_request_records_the_keys_last_use(personas, demo_route):
    key = ApiKey.objects.get(consumer=personas.bob)
    assert key.last_used_at is None
    assert chat(personas.bob_key, {"model": "demo", "messages": [{"role": "user", "content": "hi"}]}).status_code == 200
    key.refresh_from_db()
    assert key.last_used_at is not None
