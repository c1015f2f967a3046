"""`manage.py gateway_apply`'s entry point: load the file, plan every section, write it all or nothing."""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from gateway_site.lib.configfile.loading import ConfigError, ConfigMap, config_load
from gateway_site.lib.configfile.plan import Plan
from gateway_site.lib.configfile.registry import sections_all


def config_plan(root: ConfigMap, *, prune: bool = False, options: Mapping[str, Any] | None = None) -> Plan:
    """Parse every section, then compare with the database. Reads only."""
    sections = sections_all()
    known = {s.key for s in sections}
    for key in root:
        if key not in known:
            raise ConfigError(
                f"{root.key_where[key]}: unknown section {key!r} (expected one of: {', '.join(sorted(known))})"
            )
    present = [s for s in sections if s.key in root]
    plan = Plan(parsed={}, section_where={s.key: root.key_where[s.key] for s in present}, prune=prune,
                options=dict(options or {}))
    for s in present:
        plan.parsed[s.key] = s.parse(root[s.key], where=root.key_where[s.key])
    for s in present:
        s.diff(plan.parsed[s.key], plan)
    # Deletions go last and backwards, so what a later section uses (a route's
    # deployments use providers) is gone before what it used.
    for s in reversed(present) if prune else present:
        s.prune(plan.parsed[s.key], plan)
    return plan


def config_apply(*, text: str, filename: str, dry_run: bool = False, prune: bool = False,
                 options: Mapping[str, Any] | None = None) -> Plan:
    """Make the database match the file, all or nothing; with dry_run, only report."""
    root = config_load(text, filename=filename)
    with transaction.atomic():
        plan = config_plan(root, prune=prune, options=options)
        if dry_run:
            transaction.set_rollback(True)
        else:
            plan.execute()
    return plan
