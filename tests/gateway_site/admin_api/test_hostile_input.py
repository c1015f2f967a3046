"""Hostile input to the admin API is a 400 in the API's error shape, never a 500 (issue #15):
bodies Django refuses to parse (too many fields or files, too many bytes), and values the
database cannot use (a NUL in a search, found by tests/gateway_site/admin_api/test_schema_fuzz.py)."""
from __future__ import annotations

from urllib.parse import urlencode

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from budgets.models import Consumer
from tests.gateway_site.admin_api.conftest import token_client

pytestmark = pytest.mark.django_db

URL = "/api/admin/consumers/"


def assert_refused(response, code: str) -> None:
    assert response.status_code == 400, response.content[:300]
    body = response.json()
    assert body["error"]["code"] == code
    assert body["error"]["message"]
    assert not Consumer.objects.filter(name="flood").exists()


def test_a_multipart_post_with_5000_fields_is_a_400(staff):
    fields = {"name": "flood", **{f"field{i}": "x" for i in range(5000)}}
    assert_refused(token_client(staff.admin_token).post(URL, fields, format="multipart"), "too_many_fields")


def test_a_form_post_with_5000_fields_is_a_400(staff):
    body = urlencode({"name": "flood", **{f"field{i}": "x" for i in range(5000)}})
    response = token_client(staff.admin_token).post(URL, body, content_type="application/x-www-form-urlencoded")
    assert_refused(response, "too_many_fields")


def test_a_multipart_post_with_too_many_files_is_a_400(staff):
    files = {f"file{i}": SimpleUploadedFile(f"f{i}.txt", b"x") for i in range(150)}
    response = token_client(staff.admin_token).post(URL, {"name": "flood", **files}, format="multipart")
    assert_refused(response, "too_many_files")


def test_a_multipart_field_over_the_size_limit_is_a_400(staff, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = token_client(staff.admin_token).post(URL, {"name": "flood", "description": "x" * 20_000},
                                                    format="multipart")
    assert_refused(response, "request_too_large")


def test_with_a_session_the_csrf_check_reading_the_form_is_a_400_too(staff, settings):
    # The CSRF check of session authentication reads request.POST itself, before any parser.
    client = Client(enforce_csrf_checks=True)
    client.force_login(staff.admin)
    client.cookies[settings.CSRF_COOKIE_NAME] = "a" * 32  # with the cookie, the check looks in the form
    fields = {"name": "flood", **{f"field{i}": "x" for i in range(5000)}}
    assert_refused(client.post(URL, fields), "too_many_fields")


@pytest.mark.parametrize(("url", "query"), [
    (URL, {"search": "a\x00b"}),
    ("/api/admin/audit-events/", {"route": "a\x00b"}),
    ("/api/admin/audit-events/", {"consumer": "\x00"}),
])
def test_a_nul_in_a_query_parameter_is_a_400(staff, url, query):
    response = token_client(staff.admin_token).get(url, query)
    assert response.status_code == 400, response.content[:300]
    assert response.json()["error"]["code"] == "invalid"
