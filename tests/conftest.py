from __future__ import annotations

from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.cache import cache

from budgets.keys import key_issue, key_revoke
from budgets.models import Consumer
from budgets.signals import key_cache
from gateway_site.lib.db import database_forget_down
from proxy.auth import _last_touch
from proxy.breaker import snapshot as breaker_snapshot
from proxy.models import Deployment, ModelRoute, Provider
from proxy.routing import route_cache
from tests.servers import sandbox_in_thread


def clear_shared_cache() -> None:
    """Empty this test run's part of the shared cache (not the whole Redis database)."""
    if settings.REDIS_URL:
        client = cache._cache.get_client(write=True)
        prefix = settings.CACHES["default"]["KEY_PREFIX"]
        keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
        if keys:
            client.delete(*keys)
    else:
        cache.clear()


def _clear_caches() -> None:
    database_forget_down()
    _last_touch.clear()
    key_cache.clear_local()
    route_cache.clear_local()
    breaker_snapshot.clear()
    clear_shared_cache()


@pytest.fixture(autouse=True)
def fresh_caches() -> Iterator[None]:
    """Tests roll back their rows without signals: start each with empty caches."""
    _clear_caches()
    yield
    _clear_caches()


@pytest.fixture
def personas(db) -> SimpleNamespace:
    """The cast: an admin, a compliance officer, two consumers with keys, one revoked key."""
    user_model = get_user_model()
    admin = user_model.objects.create_user("ada", "ada@example.com", "ada-password-1", is_staff=True,
                                           is_superuser=True)
    compliance = user_model.objects.create_user("carl", "carl@example.com", "carl-password-1",
                                                is_staff=True)
    alice = Consumer.objects.create(name="alice-agent", description="Alice's coding agent")
    bob = Consumer.objects.create(name="bob-batch", description="Bob's batch jobs")
    alice_key = key_issue(consumer=alice, name="laptop")
    bob_key = key_issue(consumer=bob, name="ci")
    revoked = key_issue(consumer=alice, name="old")
    key_revoke(key=revoked.key)
    return SimpleNamespace(admin=admin, compliance=compliance, alice=alice, bob=bob,
                           alice_key=alice_key.plaintext, bob_key=bob_key.plaintext,
                           revoked_key=revoked.plaintext)


@pytest.fixture
def staff(personas) -> SimpleNamespace:
    """gwen in gateway-admin (not a superuser: the group's permissions are what is tested),
    carl (the personas' compliance officer) in compliance."""
    from django.contrib.auth.models import Group

    gwen = get_user_model().objects.create_user("gwen", "gwen@example.com", "gwen-password-1", is_staff=True)
    gwen.groups.add(Group.objects.get(name="gateway-admin"))
    personas.compliance.groups.add(Group.objects.get(name="compliance"))
    return SimpleNamespace(admin=gwen, compliance=personas.compliance)


@pytest.fixture(scope="session")
def sandbox_url() -> Iterator[str]:
    with sandbox_in_thread() as url:
        yield url


@pytest.fixture
def sandbox_provider(db, sandbox_url) -> Provider:
    return Provider.objects.create(name="sandbox", kind="sandbox", base_url=f"{sandbox_url}/v1")


@pytest.fixture
def demo_route(sandbox_provider) -> ModelRoute:
    route = ModelRoute.objects.create(model="demo")
    Deployment.objects.create(route=route, provider=sandbox_provider, upstream_model="sandbox-model")
    return route


@pytest.fixture(scope="session")
def django_db_setup(django_db_setup, django_db_blocker, request) -> Iterator[None]:
    """The test database; and, when a test of this run starts servers, a copy of it as migrated,
    the template of `server_database` (made now, while nothing else is connected to it)."""
    from django.db import connection

    from tests.servers import close_database_connections, database_copy, database_drop, database_template_name

    if not any("server_database" in item.fixturenames for item in request.session.items):
        yield
        return
    settings_dict = connection.settings_dict
    template = database_template_name(settings_dict)
    with django_db_blocker.unblock():
        close_database_connections()
        database_copy(settings_dict, settings_dict["NAME"], template)
    try:
        yield
    finally:
        with django_db_blocker.unblock():
            database_drop(settings_dict, template)


@pytest.fixture(scope="module")
def server_database(django_db_setup) -> Iterator[str]:
    """For a module whose tests start real servers: a fresh copy of the migrated test database,
    the module's database (this process's and its servers'), dropped after the module. Yields its
    DATABASE_URL. Module-scoped, so it is in place before any test's transaction opens."""
    from tests.servers import database_of_its_own

    with database_of_its_own() as url:  # no query of Django's: no need to unblock the database
        yield url
