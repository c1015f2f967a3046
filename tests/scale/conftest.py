"""Three gateway nodes behind nginx on the module's own database and one Redis (tests/scale/nodes.py)."""
from __future__ import annotations

import os
from collections.abc import Iterator
from itertools import count
from types import SimpleNamespace

import pytest
from django.conf import settings

from proxy.bounds import estimate_prompt_tokens
from tests.scale.nodes import chat_body, nginx_binary, redis_forget, redis_topology_env, seed_nodes, three_nodes
from tests.servers import free_port, server_env

# A budget that admits about 20 of the 100 concurrent requests (each reserves its worst case).
BUDGET_BODY = chat_body("nodes-budget")
BUDGET_RESERVE = estimate_prompt_tokens(BUDGET_BODY) + BUDGET_BODY["max_tokens"]
BUDGET_LIMIT = 20 * BUDGET_RESERVE

_runs = count(1)


def require_nginx() -> str:
    """nginx's path; skip without it, or fail under CI (CI=true), where a skip would hide a broken install."""
    binary = nginx_binary()
    if binary:
        return binary
    reason = "nginx is not installed (apt-get install nginx; .ci/run installs it)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def nginx_bin() -> str:
    return require_nginx()


@pytest.fixture(scope="module")
def redis_topology() -> dict[str, str]:
    """The nodes' Redis, as environment: this run's Redis (REDIS_URL)."""
    return redis_topology_env(settings.REDIS_URL)


@pytest.fixture(scope="module")
def cluster(nginx_bin, redis_topology, server_database, django_db_blocker) -> Iterator[SimpleNamespace]:
    """Seeded database, sandbox, three nodes (two workers each) and nginx, for the module.

    The nodes have a cache prefix of their own: the tests' autouse fixture empties this run's
    prefix between tests, which would reset the key cache's generation under the nodes' feet."""
    sandbox_port = free_port()
    with django_db_blocker.unblock():
        seeded = seed_nodes(sandbox_port, budget_limit=BUDGET_LIMIT)
    prefix = f"tgnodes{os.getpid()}x{next(_runs)}"
    env = server_env(DATABASE_URL=server_database, TOLLGATE_CACHE_PREFIX=prefix, **redis_topology)
    try:
        with three_nodes(env, sandbox_port=sandbox_port, nginx_bin=nginx_bin, workers=2) as running:
            yield SimpleNamespace(**vars(running), **vars(seeded), cache_prefix=prefix)
    finally:
        if redis_topology.get("REDIS_URL"):  # a cluster of the module's own goes with it
            redis_forget(redis_topology["REDIS_URL"], prefix)
