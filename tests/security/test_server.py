"""What the real server (the Procfile's start) tells an unauthenticated caller: no banner, no product name."""
from __future__ import annotations

import httpx
import pytest
from django.db import connection

from tests.servers import database_url_for, free_port, gateway_command, server_env, subprocess_server

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]


def test_a_401_from_the_real_server_names_no_server_and_no_product(server_database, django_db_blocker):
    with django_db_blocker.unblock():
        database_url = database_url_for(connection.settings_dict)
    env = server_env(DATABASE_URL=database_url)
    env.pop("DJANGO_DEBUG", None)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with subprocess_server(gateway_command(port, workers=1), health_url=f"{url}/healthz", env=env,
                           log_name="banner-gateway"):
        response = httpx.post(f"{url}/v1/chat/completions", headers={"Authorization": "Bearer tg-unknown-key"},
                              json={"model": "demo", "messages": [{"role": "user", "content": "hi"}]})
        health = httpx.get(f"{url}/healthz")
    assert response.status_code == 401
    for answer in (response, health):
        assert "server" not in answer.headers, answer.headers
        headers = str(answer.headers.multi_items()).lower()
        assert "uvicorn" not in headers and "tollgate" not in headers, answer.headers
        assert b"tollgate" not in answer.content.lower(), answer.content
