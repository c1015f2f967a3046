"""The failover, pinning and health keys of `gateway_apply` / `gateway_export` (docs/providers.md)."""
from __future__ import annotations

import io
import textwrap

import pytest
from django.core.management import CommandError, call_command

from proxy.models import ModelRoute, Provider

pytestmark = pytest.mark.django_db

FILE = """\
providers:
  - name: anthropic-main
    kind: anthropic
    base_url: https://api.anthropic.com
    api_key_env: TOLLGATE_PROVIDER_ANTHROPIC_API_KEY
    health_check_interval_seconds: 30
  - name: openai-main
    kind: openai
    base_url: https://api.openai.com/v1
    api_key_env: TOLLGATE_PROVIDER_OPENAI_API_KEY
routes:
  - model: smart
    max_retries: 1
    retry_budget_seconds: 20
    failover_statuses: [429, 500, 503, 529]
    allow_pin_fallback: true
    deployments:
      - {provider: anthropic-main, model: claude-sonnet-4-5, weight: 10, priority: 0}
      - {provider: openai-main, model: gpt-4o, weight: 5, priority: 0}
"""


def apply(tmp_path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text))
    out = io.StringIO()
    call_command("gateway_apply", str(path), "--allow-credentials", stdout=out, stderr=io.StringIO())
    return out.getvalue()


def test_it_applies_and_exports_the_failover_keys(tmp_path):
    apply(tmp_path, FILE)
    route = ModelRoute.objects.get(model="smart")
    assert (route.max_retries, route.retry_budget_seconds, route.failover_statuses, route.allow_pin_fallback) == (
        1, 20.0, [429, 500, 503, 529], True)
    assert Provider.objects.get(name="anthropic-main").health_check_interval_seconds == 30
    assert "~" not in apply(tmp_path, FILE), "applying twice changes nothing"
    out = io.StringIO()
    call_command("gateway_export", stdout=out)
    exported = out.getvalue()
    assert "max_retries: 1" in exported and "allow_pin_fallback: true" in exported
    assert "health_check_interval_seconds: 30" in exported


def test_omitted_keys_take_the_defaults(tmp_path):
    apply(tmp_path, FILE.replace("    max_retries: 1\n", "").replace("    allow_pin_fallback: true\n", ""))
    route = ModelRoute.objects.get(model="smart")
    assert route.max_retries == 2 and route.allow_pin_fallback is False


@pytest.mark.parametrize(("bad", "message"), [
    ("failover_statuses: [429, 700]", "failover_statuses must be a list of HTTP statuses"),
    ("failover_statuses: 429", "failover_statuses must be a list"),
    ("max_retries: -1", "max_retries must be 0 or more"),
    ("retry_budget_seconds: -5", "retry_budget_seconds must be 0 or more"),
    ("allow_pin_fallback: sometimes", "allow_pin_fallback must be true or false"),
])
def test_it_refuses_bad_values_naming_the_line(tmp_path, bad, message):
    key = bad.split(":")[0]
    lines = [line for line in FILE.splitlines() if line.strip().split(":")[0] != key]
    lines.insert(lines.index("  - model: smart") + 1, f"    {bad}")
    with pytest.raises(CommandError) as caught:
        apply(tmp_path, "\n".join(lines) + "\n")
    assert message in str(caught.value)
    assert "gateway.yaml:" in str(caught.value)
