"""Schemathesis: every admin API operation, fed inputs generated from its own OpenAPI schema, never answers 5xx.

The schema is the one /api/schema/ serves, and every operation in it (all paths and methods, 50
today, JSON, form and multipart bodies) is fuzzed but the one in SKIPPED. In process (the WSGI
app), as a gateway-admin (also in gateway-credentials, so providers' guarded
fields are fuzzed too) with a token; 20 examples per operation, fewer (at least 5) if a loaded
machine would take the run past 35 s (the CI budget is a minute).
"""
from __future__ import annotations

import json
import time

import pytest
import schemathesis
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from django.test import Client
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings

from gateway_site.auth_tokens import token_issue

pytestmark = pytest.mark.django_db
# The health check calls whatever URL a generated provider names: not for a fuzzer (tested by hand elsewhere).
SKIPPED = {("POST", "/api/admin/providers/{id}/check/")}


def _served_schema(headers: dict) -> dict:
    response = Client().get("/api/schema/?format=json", headers=headers)
    assert response.status_code == 200
    return json.loads(response.content)


def _schema(document: dict):
    loaded = schemathesis.openapi.from_dict(document)
    loaded.app = get_wsgi_application()
    return loaded


def _operations(document: dict) -> set[tuple[str, str]]:
    methods = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item if method in methods}


def test_no_operation_answers_5xx(personas, demo_route, settings):
    settings.PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
    user = get_user_model().objects.create_user("fuzz", password="fuzz-password-1", is_staff=True)
    user.groups.add(Group.objects.get(name="gateway-admin"), Group.objects.get(name="gateway-credentials"))
    headers = {"Authorization": f"Token {token_issue(user=user).plaintext}"}
    document = _served_schema(headers)
    failures: list[str] = []
    fuzzed: set[tuple[str, str]] = set()
    # As Django's test client does: the WSGI app must not close the test's database connection.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        fuzzed = _fuzz(_schema(document), headers, failures)
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
    assert len(fuzzed) >= 30
    assert fuzzed == _operations(document) - SKIPPED, "every operation /api/schema/ serves is fuzzed"
    assert not failures, "\n".join(failures[:10])


# Bounded in time as well as in examples: 20 examples per operation while the run keeps within
# BUDGET_SECONDS (20-25 s are enough on a quiet 2-core machine), fewer, never under 5, when a loaded
# machine makes each one slower; CI's budget for the whole test is a minute.
MAX_EXAMPLES, MIN_EXAMPLES, BUDGET_SECONDS = 20, 5, 35.0


def _fuzz(schema, headers: dict, failures: list[str]) -> set[tuple[str, str]]:
    operations = [result.ok() for result in schema.get_all_operations()]
    operations = [op for op in operations if (op.method.upper(), op.path) not in SKIPPED]
    fuzzed = set()
    started, examples = time.monotonic(), [0]
    for index, operation in enumerate(operations):
        fuzzed.add((operation.method.upper(), operation.path))
        elapsed = time.monotonic() - started
        per_example = elapsed / examples[0] if examples[0] else 0.0
        share = (BUDGET_SECONDS - elapsed) / (len(operations) - index)
        budgeted = int(share / per_example) if per_example else MAX_EXAMPLES

        @given(case=operation.as_strategy())
        @hypothesis_settings(max_examples=max(MIN_EXAMPLES, min(MAX_EXAMPLES, budgeted)), deadline=None,
                             phases=[Phase.explicit, Phase.generate], database=None,
                             suppress_health_check=list(HealthCheck))
        def check(case):
            examples[0] += 1
            response = case.call(headers=headers)
            if response.status_code >= 500:
                failures.append(f"{case.method} {case.formatted_path} query={case.query!r} body={case.body!r}: "
                                f"{response.status_code} "
                                f"{response.text[:300]}")

        check()
    print(f"\nschemathesis: {len(fuzzed)} operations, {examples[0]} examples in {time.monotonic() - started:.1f} s")
    return fuzzed
