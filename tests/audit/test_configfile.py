"""The `audit:` key of a consumer in the configuration file (gateway_apply / gateway_export)."""
from __future__ import annotations

import pytest

from budgets.models import Consumer
from gateway_site.lib.configfile import ConfigError, config_apply, config_export

pytestmark = pytest.mark.django_db

FILE = """\
consumers:
  - name: alice-agent
    audit: {mode}
  - name: bob-batch
"""


def apply(text: str, **kwargs):
    return config_apply(text=text, filename="gateway.yaml", **kwargs)


def test_it_sets_changes_and_removes_a_consumers_body_mode():
    plan = apply(FILE.format(mode="full"))
    assert "+ audit policy of alice-agent (full)" in [str(c) for c in plan.changes]
    assert Consumer.objects.get(name="alice-agent").audit_body_mode == "full"
    assert Consumer.objects.get(name="bob-batch").audit_body_mode is None
    assert "audit: full" in config_export()
    plan = apply(FILE.format(mode="none"))
    assert [str(c) for c in plan.changes] == ["~ audit policy of alice-agent: full → none"]
    assert apply(FILE.format(mode="none")).changes == []  # idempotent
    apply(FILE.replace("    audit: {mode}\n", ""))
    assert not Consumer.objects.filter(audit_body_mode__isnull=False).exists()
    assert Consumer.objects.count() == 2


def test_a_dry_run_changes_nothing():
    apply(FILE.format(mode="metadata"), dry_run=True)
    assert not Consumer.objects.exists()


def test_it_names_the_line_of_a_bad_mode():
    with pytest.raises(ConfigError, match=r"gateway.yaml:3: audit must be one of none, metadata, full"):
        apply(FILE.format(mode="everything"))
