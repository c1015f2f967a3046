"""deploy/grafana-dashboard.json is importable and only charts metrics that /metrics exposes."""
from __future__ import annotations

import json
import re

import pytest
from django.test import Client

from tests.servers import ROOT


@pytest.mark.django_db
def test_the_dashboard_charts_only_exposed_metrics():
    dashboard = json.loads((ROOT / "deploy" / "grafana-dashboard.json").read_text())
    assert dashboard["__inputs"][0]["pluginId"] == "prometheus"
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|count|sum)$", "", m) for e in exprs for m in re.findall(r"tollgate_[a-z_]+", e)}
    exposed = Client().get("/metrics", REMOTE_ADDR="127.0.0.1").content.decode()
    missing = sorted(name for name in used if f"# TYPE {name} " not in exposed
                     and f"# TYPE {name.removesuffix('_total')} " not in exposed)
    assert not missing
    assert len(used) >= 15
