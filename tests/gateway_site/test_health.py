from __future__ import annotations

import pytest
from django.test import override_settings

from tests.proxy.client import call
from tests.servers import free_port


@pytest.mark.django_db
def test_readyz_is_ok_when_the_database_answers():
    response = call("GET", "/readyz")
    assert response.status_code == 200
    assert response.json()["checks"]["database"] == "ok"


@pytest.mark.django_db
def test_readyz_is_unavailable_when_redis_is_down():
    dead = f"redis://127.0.0.1:{free_port()}/0"
    caches = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": dead,
                          "OPTIONS": {"socket_timeout": 0.5, "socket_connect_timeout": 0.5}}}
    with override_settings(REDIS_URL=dead, CACHES=caches):
        response = call("GET", "/readyz")
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["redis"].startswith("error")


def test_healthz_needs_nothing_but_the_process():
    assert call("GET", "/healthz").json() == {"status": "ok"}
