"""The client address used for the audit log and limits: X-Forwarded-For only from trusted proxies."""
from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured
from django.test import RequestFactory, override_settings

from gateway_site.lib.clientaddr import client_address, parse_networks
from proxy.pipeline import client_ip


def test_without_trusted_proxies_the_peer_is_the_client():
    meta = {"REMOTE_ADDR": "127.0.0.1", "HTTP_X_FORWARDED_FOR": "203.0.113.9"}
    assert client_address(meta) == "127.0.0.1"


@override_settings(TOLLGATE_TRUSTED_PROXIES=["10.0.0.0/8", "127.0.0.1"])
def test_it_takes_the_first_untrusted_hop_from_the_right():
    # The client wrote 1.1.1.1 itself; 203.0.113.9 is what our proxy saw.
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.1.1.1, 203.0.113.9, 10.0.0.3"}
    assert client_address(meta) == "203.0.113.9"


@override_settings(TOLLGATE_TRUSTED_PROXIES=["10.0.0.0/8"])
def test_it_ignores_the_header_from_an_untrusted_peer():
    meta = {"REMOTE_ADDR": "198.51.100.4", "HTTP_X_FORWARDED_FOR": "1.1.1.1"}
    assert client_address(meta) == "198.51.100.4"


@override_settings(TOLLGATE_TRUSTED_PROXIES=["10.0.0.0/8"])
def test_garbage_in_the_header_stops_the_walk():
    meta = {"REMOTE_ADDR": "10.0.0.2", "HTTP_X_FORWARDED_FOR": "1.1.1.1, not-an-ip"}
    assert client_address(meta) == "10.0.0.2"


@override_settings(TOLLGATE_TRUSTED_PROXIES=["127.0.0.1"])
def test_the_proxy_pipeline_uses_it():
    request = RequestFactory().post("/v1/chat/completions", REMOTE_ADDR="127.0.0.1",
                                    HTTP_X_FORWARDED_FOR="203.0.113.9")
    assert client_ip(request) == "203.0.113.9"


def test_a_bad_network_fails_loudly():
    with pytest.raises(ImproperlyConfigured, match="TOLLGATE_TRUSTED_PROXIES"):
        parse_networks(["10.0.0.0/8", "nonsense"], setting="TOLLGATE_TRUSTED_PROXIES")
