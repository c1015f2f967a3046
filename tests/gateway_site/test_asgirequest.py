"""The proxy paths' request object (gateway_site/lib/asgirequest.py): what the views read, as Django has it."""
from __future__ import annotations

from gateway_site.lib.asgirequest import LeanRequest
from gateway_site.lib.clientaddr import client_address


def _scope(headers: list[tuple[bytes, bytes]], query: bytes = b"") -> dict:
    return {"type": "http", "method": "POST", "path": "/v1/chat/completions", "query_string": query,
            "client": ("203.0.113.7", 40000), "server": ("127.0.0.1", 8000), "headers": headers}


def test_headers_are_read_in_any_case_and_repeated_ones_joined():
    request = LeanRequest(_scope([(b"Authorization", b"Bearer tg-x"), (b"x-tag", b"a"), (b"X-Tag", b"b")]))
    assert request.headers["authorization"] == request.headers.get("AUTHORIZATION") == "Bearer tg-x"
    assert "Authorization" in request.headers and "x-api-key" not in request.headers
    assert request.headers.get("x-tag") == "a,b"
    assert request.method == "POST" and request.path == request.path_info == "/v1/chat/completions"


def test_a_header_with_an_underscore_is_dropped_as_django_drops_it():
    # X_Forwarded_For must not pass for X-Forwarded-For, nor x_api_key for x-api-key.
    request = LeanRequest(_scope([(b"x_forwarded_for", b"10.0.0.1"), (b"x_api_key", b"tg-spoof")]))
    assert request.headers.get("x-api-key") is None and "x_api_key" not in request.headers
    assert "HTTP_X_FORWARDED_FOR" not in request.META
    assert client_address(request.META) == "203.0.113.7"


def test_meta_has_the_peer_the_forwarding_header_and_the_host():
    request = LeanRequest(_scope([(b"x-forwarded-for", b"198.51.100.1"), (b"host", b"gw.example")]))
    assert request.META["REMOTE_ADDR"] == "203.0.113.7"
    assert request.META["HTTP_X_FORWARDED_FOR"] == "198.51.100.1"
    assert request.META["HTTP_HOST"] == "gw.example"


def test_the_query_string_and_the_body():
    request = LeanRequest(_scope([], query=b"key=tg-q&alt=sse"), body=b'{"a": 1}')
    assert request.GET.get("key") == "tg-q" and request.GET.get("alt") == "sse"
    assert request.body == b'{"a": 1}'
