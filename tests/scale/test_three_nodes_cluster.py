"""The three nodes' shared-state checks again, with the nodes' shared state on a real Redis Cluster
(3 masters, 3 replicas, tests/redis_cluster.py) instead of one Redis: the budget's Lua script,
key-cache invalidation, breaker state, and /readyz all go through the cluster client (issue #18).

The audit and kill checks (PostgreSQL's part) run once, in test_three_nodes.py.
"""
from __future__ import annotations

import pytest
from django.conf import settings

from tests.redis_cluster import ClusterHandle, redis_cluster  # noqa: F401 -- the module's cluster fixture
from tests.scale.test_three_nodes import pytestmark as _marks
from tests.scale.test_three_nodes import (  # noqa: F401 -- collected here too, on the cluster
    test_a_revoked_key_stops_working_on_every_node,
    test_a_token_budget_holds_across_nodes_under_100_concurrent_requests,
    test_an_open_breaker_on_one_node_is_seen_by_the_others,
    test_each_node_answers_health_and_counts_its_own_requests,
)

pytestmark = [*_marks, pytest.mark.skipif(not hasattr(settings, "TOLLGATE_REDIS_CLUSTER_NODES"),
                                          reason="these settings do not speak Redis Cluster yet")]


@pytest.fixture(scope="module")
def redis_topology(redis_cluster: ClusterHandle) -> dict[str, str]:  # noqa: F811 -- the fixture above
    """The nodes' shared state on the module's Redis Cluster; Celery's broker (which does not speak
    Cluster) on this run's plain Redis."""
    return redis_cluster.nodes_env(celery_broker_url=settings.REDIS_URL)
