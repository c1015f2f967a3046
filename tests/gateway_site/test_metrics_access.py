"""Who may read /metrics: loopback and private addresses by default, an allow-list, a bearer token."""
from __future__ import annotations

import pytest
from django.test import Client, override_settings

pytestmark = pytest.mark.django_db


def scrape(**meta):
    return Client().get("/metrics", **meta)


def test_it_answers_loopback_in_prometheus_format():
    response = scrape(REMOTE_ADDR="127.0.0.1")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    body = response.content.decode()
    assert "# TYPE tollgate_requests_total counter" in body
    assert "tollgate_state_up" in body


@pytest.mark.parametrize("address", ["10.1.2.3", "192.168.1.20", "172.20.0.5", "::1", "fd00::5"])
def test_it_answers_private_addresses(address):
    assert scrape(REMOTE_ADDR=address).status_code == 200


@pytest.mark.parametrize("address", ["203.0.113.5", "8.8.8.8", "2001:db8::1"])
def test_it_refuses_public_addresses(address):
    response = scrape(REMOTE_ADDR=address)
    assert response.status_code == 403
    assert b"tollgate_" not in response.content


@override_settings(TOLLGATE_METRICS_ALLOW=["203.0.113.0/24"])
def test_the_allow_list_replaces_the_default():
    assert scrape(REMOTE_ADDR="203.0.113.5").status_code == 200
    assert scrape(REMOTE_ADDR="127.0.0.1").status_code == 403


@override_settings(TOLLGATE_METRICS_TOKEN="scrape-secret-123")
def test_a_token_when_set_is_required():
    assert scrape(REMOTE_ADDR="127.0.0.1").status_code == 401
    assert scrape(REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert scrape(REMOTE_ADDR="127.0.0.1", HTTP_AUTHORIZATION="Bearer scrape-secret-123").status_code == 200
    # The token does not open /metrics to addresses outside the allow-list.
    assert scrape(REMOTE_ADDR="8.8.8.8", HTTP_AUTHORIZATION="Bearer scrape-secret-123").status_code == 403


def test_it_refuses_requests_forwarded_by_an_untrusted_proxy():
    # A reverse proxy on the same machine makes every request look local: refuse what it forwards.
    assert scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403


@override_settings(TOLLGATE_TRUSTED_PROXIES=["127.0.0.1/32"])
def test_behind_a_trusted_proxy_the_forwarded_client_decides():
    assert scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="203.0.113.9").status_code == 403
    assert scrape(REMOTE_ADDR="127.0.0.1", HTTP_X_FORWARDED_FOR="10.0.0.7").status_code == 200
