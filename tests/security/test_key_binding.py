"""Keys bound to who may use them, and the alert when a key is used from somewhere new (issue #17;
docs/admin.md#key-binding). In process; test_key_binding_e2e.py runs the real server."""
from __future__ import annotations

import io
import ipaddress
import logging
import textwrap
from collections.abc import Iterator

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

from audit.models import AuditEvent
from budgets.binding import ClientBinding, binding_build, networks_problem
from budgets.keys import key_digest, key_issue, key_rotate
from budgets.models import ApiKey, Consumer
from budgets.selectors import key_info_by_digest
from gateway_site.auth_tokens import token_issue
from gateway_site.lib.sharedcache import cache
from proxy import keywatch
from tests.proxy.client import call, chat
from tests.security.test_probing import Collector

pytestmark = pytest.mark.django_db

HELLO = {"model": "demo", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(autouse=True)
def inline_keywatch(monkeypatch) -> Iterator[None]:
    """Run the background half of key_seen at once, and forget what this worker has passed on."""
    class Inline:
        def submit(self, fn, **kwargs):
            fn(**kwargs)

    monkeypatch.setattr(keywatch, "_executor", Inline())
    keywatch._local.clear()
    yield
    keywatch._local.clear()


@pytest.fixture
def collector() -> Iterator[Collector]:
    server = Collector()
    with override_settings(TOLLGATE_SECURITY_ALERT_WEBHOOK=server.url):
        yield server
    server.close()


def bound_key(consumer: Consumer, **binding: list[str]) -> str:
    return key_issue(consumer=consumer, name="bound", **binding).plaintext


# --- The rule ----------------------------------------------------------------------------------


def test_a_binding_admits_only_its_networks_in_both_families():
    binding = binding_build(owner="k", networks=[[], ["10.0.0.0/8", "2001:db8::/32"]], user_agents=[])
    assert binding.refusal("10.20.30.40", "") is None
    assert binding.refusal("::ffff:10.1.1.1", "") is None  # an IPv4 client seen through an IPv6 socket
    assert binding.refusal("2001:db8:5::1", "") is None
    assert "may not be used from 192.168.1.1" in binding.refusal("192.168.1.1", "")
    assert binding.refusal("2001:db9::1", "") is not None
    assert "unknown address" in binding.refusal(None, "")


def test_the_consumer_and_the_key_must_both_admit_the_request():
    binding = binding_build(owner="k", networks=[["10.0.0.0/8"], ["10.1.0.0/16"]],
                            user_agents=[["claude-cli/", "codex"], ["Claude-CLI/2."]])
    assert binding.refusal("10.1.2.3", "claude-cli/2.0.1 (external)") is None
    assert binding.refusal("10.2.0.1", "claude-cli/2.0.1") is not None  # the key's narrower network
    assert binding.refusal("10.1.2.3", "codex_cli_rs/0.1") is not None  # the key admits claude-cli/2. only
    assert "User-Agent" in binding.refusal("10.1.2.3", "curl/8.5")


def test_nothing_bound_is_no_binding_at_all():
    assert binding_build(owner="k", networks=[[], []], user_agents=[[], []]) is None


@pytest.mark.parametrize(("value", "message"), [
    (["10.1.2.3/8"], "has host bits set; did you mean 10.0.0.0/8?"),
    (["not-a-network"], "is not an IP address or CIDR"),
    ("10.0.0.0/8", "must be a list of CIDRs"),
    ([8], "must be a list of CIDRs"),
])
def test_bad_networks_are_refused_with_a_reason(personas, value, message):
    assert message in networks_problem(value)
    key = ApiKey.objects.get(consumer=personas.bob)
    key.allowed_networks = value
    with pytest.raises(ValidationError) as info:
        key.full_clean()
    assert message in str(info.value.message_dict["allowed_networks"])


def test_the_cached_entry_carries_the_parsed_binding(personas):
    plaintext = bound_key(personas.alice, allowed_networks=["10.0.0.0/8"], allowed_user_agents=["Claude-CLI/"])
    personas.alice.allowed_networks = ["fd00::/8"]
    personas.alice.save()
    info = key_info_by_digest(key_digest(plaintext))
    assert isinstance(info.binding, ClientBinding)
    assert info.binding.networks == ((ipaddress.ip_network("fd00::/8"),), (ipaddress.ip_network("10.0.0.0/8"),))
    assert info.binding.user_agents == (("claude-cli/",),)
    assert key_info_by_digest(key_digest(personas.bob_key)).binding is None


def test_a_bound_key_reads_nothing_from_the_database_once_cached(personas, demo_route):
    plaintext = bound_key(personas.alice, allowed_networks=["127.0.0.0/8"])
    assert chat(plaintext, HELLO).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert chat(plaintext, HELLO).status_code == 200
    audit = ("audit_", "SAVEPOINT")
    assert [q["sql"] for q in queries.captured_queries if not any(a in q["sql"] for a in audit)] == []


# --- On the request path ---------------------------------------------------------------------------


def test_a_key_bound_elsewhere_is_a_403_in_each_callers_shape_and_audited(personas, demo_route, caplog):
    plaintext = bound_key(personas.alice, allowed_networks=["10.0.0.0/8"])
    with caplog.at_level(logging.INFO, logger="tollgate.security"):
        refused = chat(plaintext, HELLO)
    assert refused.status_code == 403
    assert refused.json()["error"]["type"] == "permission_error"
    assert refused.json()["error"]["code"] == "permission_denied"
    assert "refused: used from 127.0.0.1" in caplog.text and plaintext not in caplog.text
    event = AuditEvent.objects.get(request_id=refused.headers["x-request-id"])
    assert (event.status, event.error_class) == (403, "permission_denied")
    anthropic = call("POST", "/v1/messages", key=plaintext, body=HELLO, headers={"anthropic-version": "2023-06-01"})
    assert anthropic.status_code == 403
    assert anthropic.json() == {"type": "error", "error": {"type": "permission_error",
                                                           "message": refused.json()["error"]["message"]}}


def test_a_consumers_binding_applies_to_all_its_keys(personas, demo_route, django_capture_on_commit_callbacks):
    assert chat(personas.alice_key, HELLO).status_code == 200
    with django_capture_on_commit_callbacks(execute=True):
        personas.alice.allowed_user_agents = ["claude-cli/"]
        personas.alice.save()
    assert chat(personas.alice_key, HELLO).status_code == 403
    assert chat(personas.alice_key, HELLO, headers={"User-Agent": "claude-cli/2.0"}).status_code == 200
    assert chat(personas.bob_key, HELLO).status_code == 200


@override_settings(TOLLGATE_TRUSTED_PROXIES=["127.0.0.1/32"])
def test_behind_a_trusted_proxy_the_forwarded_client_is_judged(personas, demo_route):
    plaintext = bound_key(personas.alice, allowed_networks=["203.0.113.0/24"])
    assert chat(plaintext, HELLO).status_code == 403
    assert chat(plaintext, HELLO, headers={"X-Forwarded-For": "203.0.113.9"}).status_code == 200
    assert call("GET", "/v1/models", key=plaintext, headers={"X-Forwarded-For": "198.51.100.1"}).status_code == 403


# --- Where the binding is set ----------------------------------------------------------------------


def api(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token_issue(user=user).plaintext}")
    return client


def test_the_admin_api_sets_and_checks_bindings(personas):
    client = api(personas.admin)
    issued = client.post("/api/admin/keys/", {"consumer": personas.bob.pk, "allowed_networks": ["10.0.0.0/8"],
                                              "allowed_user_agents": ["claude-cli/"]}, format="json")
    assert issued.status_code == 201, issued.content
    assert issued.json()["allowed_networks"] == ["10.0.0.0/8"]
    key = ApiKey.objects.get(pk=issued.json()["id"])
    assert (key.allowed_networks, key.allowed_user_agents) == (["10.0.0.0/8"], ["claude-cli/"])
    bad = client.patch(f"/api/admin/keys/{key.pk}/", {"allowed_networks": ["10.1.2.3/8"]}, format="json")
    assert bad.status_code == 400 and "did you mean 10.0.0.0/8" in bad.json()["error"]["message"]
    consumer = client.patch(f"/api/admin/consumers/{personas.bob.pk}/", {"allowed_networks": ["2001:db8::/32"]},
                            format="json")
    assert consumer.status_code == 200 and consumer.json()["allowed_networks"] == ["2001:db8::/32"]


def test_the_admin_edits_bindings_one_per_line(admin_client, personas):
    url = reverse("admin:budgets_consumer_change", args=[personas.bob.pk])
    page = admin_client.get(url).content.decode()
    assert 'name="allowed_networks"' in page and "One per line." in page
    response = admin_client.post(reverse("admin:budgets_apikey_add"), {
        "consumer": personas.bob.pk, "name": "office", "allowed_routes": "[]",
        "allowed_networks": "10.0.0.0/8\n2001:db8::/32", "allowed_user_agents": "claude-cli/"})
    assert response.status_code == 200, response.content  # the page showing the key once
    key = ApiKey.objects.get(name="office")
    assert (key.allowed_networks, key.allowed_user_agents) == (["10.0.0.0/8", "2001:db8::/32"], ["claude-cli/"])
    change = admin_client.get(reverse("admin:budgets_apikey_change", args=[key.pk])).content.decode()
    assert "10.0.0.0/8\n2001:db8::/32" in change
    bad = admin_client.post(reverse("admin:budgets_apikey_change", args=[key.pk]), {
        "name": "office", "allowed_routes": "[]", "allowed_networks": "10.1.2.3/8"})
    assert "did you mean 10.0.0.0/8" in bad.content.decode()


def test_gateway_apply_sets_a_consumers_binding(tmp_path):
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent("""\
        consumers:
          - name: ci
            allowed_networks: [10.0.0.0/8, "2001:db8::/32"]
            allowed_user_agents: [claude-cli/]
        """))
    call_command("gateway_apply", str(path), stdout=io.StringIO())
    consumer = Consumer.objects.get(name="ci")
    assert (consumer.allowed_networks, consumer.allowed_user_agents) == (["10.0.0.0/8", "2001:db8::/32"],
                                                                         ["claude-cli/"])
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    assert "allowed_networks:" in out.getvalue() and "- claude-cli/" in out.getvalue()
    path.write_text("consumers:\n  - name: ci\n    allowed_networks: [10.1.2.3/8]\n")
    with pytest.raises(CommandError) as info:
        call_command("gateway_apply", str(path), stdout=io.StringIO())
    assert "gateway.yaml:3: allowed networks: '10.1.2.3/8' has host bits set" in str(info.value)


def test_issuekey_binds_and_rotation_keeps_the_binding(personas):
    out, err = io.StringIO(), io.StringIO()
    call_command("issuekey", "bob-batch", "--networks", "10.0.0.0/8, 192.168.0.0/16", "--user-agents", "claude-cli/",
                 stdout=out, stderr=err)
    key = ApiKey.objects.get(digest=key_digest(out.getvalue().strip()))
    assert key.allowed_networks == ["10.0.0.0/8", "192.168.0.0/16"] and "networks: 10.0.0.0/8" in err.getvalue()
    successor = key_rotate(key=key).key
    assert (successor.allowed_networks, successor.allowed_user_agents) == (key.allowed_networks, ["claude-cli/"])
    with pytest.raises(CommandError, match="host bits"):
        call_command("issuekey", "bob-batch", "--networks", "10.1.2.3/8", stdout=io.StringIO(), stderr=io.StringIO())


# --- The alert when a key is used from somewhere new -------------------------------------------------


def seen(info, address: str, user_agent: str = "claude-cli/2.0") -> list[str]:
    return keywatch.key_seen_shared(key=info, address=address, family=keywatch.client_family(user_agent),
                                    user_agent=user_agent)


def test_a_new_network_or_client_raises_one_alert_per_key_and_hour(personas, collector, caplog):
    info = key_info_by_digest(key_digest(personas.alice_key))
    with caplog.at_level(logging.WARNING, logger="tollgate.security"):
        assert seen(info, "198.51.100.7") == []  # first use: nothing to compare with
        assert seen(info, "198.51.100.200") == []  # the same /24
        assert seen(info, "203.0.113.5") == ["network 203.0.113.0/24"]
        assert seen(info, "192.0.2.1", "python-requests/2.31") == []  # new again, but within the hour
        cache.delete(f"keyseen:{info.key_id}:alerted")  # the hour is over
        assert seen(info, "192.0.2.1", "python-requests/2.31") == []  # remembered though not alerted
        assert seen(info, "2001:db8:1:2::5", "curl/8.5") == ["network 2001:db8:1::/48", "client curl"]
    assert [a["new"] for a in collector.received] == ["network 203.0.113.0/24",
                                                      "network 2001:db8:1::/48 and client curl"]
    alert = collector.received[0]
    assert (alert["alert"], alert["key"], alert["consumer"], alert["client_ip"]) == (
        "key_new_client", info.prefix, "alice-agent", "203.0.113.5")
    assert personas.alice_key not in str(collector.received) + caplog.text
    assert caplog.text.count("security alert: key_new_client") == 2


def test_another_key_has_its_own_history(personas, collector):
    alice = key_info_by_digest(key_digest(personas.alice_key))
    bob = key_info_by_digest(key_digest(personas.bob_key))
    seen(alice, "198.51.100.7")
    assert seen(bob, "203.0.113.5") == []  # bob's first use
    assert collector.received == []


def test_the_request_path_passes_each_new_client_on_once_per_worker(personas, demo_route, monkeypatch):
    submitted = []

    class Recorder:
        def submit(self, fn, **kwargs):
            submitted.append((kwargs["address"], kwargs["family"]))

    monkeypatch.setattr(keywatch, "_executor", Recorder())
    for _ in range(3):
        assert chat(personas.alice_key, HELLO).status_code == 200
    assert chat(personas.alice_key, HELLO, headers={"User-Agent": "claude-cli/2.0"}).status_code == 200
    assert submitted == [("127.0.0.1", "-"), ("127.0.0.1", "claude-cli")]


@override_settings(TOLLGATE_TRUSTED_PROXIES=["127.0.0.1/32"])
def test_a_refused_use_from_a_new_network_alerts_too(personas, demo_route, collector):
    plaintext = bound_key(personas.alice, allowed_networks=["10.0.0.0/8"])
    assert chat(plaintext, HELLO, headers={"X-Forwarded-For": "10.9.9.9"}).status_code == 200
    assert chat(plaintext, HELLO, headers={"X-Forwarded-For": "198.51.100.7"}).status_code == 403
    assert [a["new"] for a in collector.received] == ["network 198.51.100.0/24"]
