"""A consumer's `audit:` key in the configuration file: its body mode (docs/audit.md).

    consumers:
      - name: alice-agent
        audit: full        # none | metadata | full; left out: TOLLGATE_AUDIT_DEFAULT_BODY_MODE
"""
from __future__ import annotations

from functools import partial
from typing import Any

from audit.models import BodyMode
from budgets.configfile import consumers
from budgets.models import Consumer
from gateway_site.lib.configfile import MISSING, ConfigError, Item, Plan, value_describe


class ConsumerAudit:
    """Stored in Consumer.audit_body_mode; empty (the key left out) means the default mode."""

    key = "audit"

    def parse(self, value: Any, *, where: str) -> str:
        if not isinstance(value, str) or value not in BodyMode.values:
            raise ConfigError(f"{where}: audit must be one of {', '.join(BodyMode.values)} "
                              f"(the body mode), got {value_describe(value)}")
        return value

    def diff(self, *, item: Item, obj: Consumer | None, value: Any, plan: Plan) -> None:
        have = obj.audit_body_mode if obj is not None else None
        if value is MISSING:
            if have is not None:
                plan.add("-", f"audit policy of {item.name} ({have}; the default applies)",
                         partial(self._delete, item.name), where=item.where)
        elif value != have:
            sign, text = ("+", f"audit policy of {item.name} ({value})") if have is None else \
                ("~", f"audit policy of {item.name}: {have} → {value}")
            plan.add(sign, text, partial(self._set, item.name, value), where=item.where)

    @staticmethod
    def _set(consumer_name: str, mode: str | None) -> None:
        consumer = Consumer.objects.get(name=consumer_name)
        consumer.audit_body_mode = mode
        # save() (not update()) so the signal drops every worker's cached key entry, which carries the mode.
        consumer.save(update_fields=["audit_body_mode", "updated_at"])

    @classmethod
    def _delete(cls, consumer_name: str) -> None:
        cls._set(consumer_name, None)

    def export(self, obj: Consumer) -> Any:
        return MISSING if obj.audit_body_mode is None else obj.audit_body_mode


consumers.add_key(ConsumerAudit())
