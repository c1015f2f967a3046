"""The `consumers:` section of the configuration file (docs/configuration-as-code.md).

Keys are never part of it: they are issued with `manage.py issuekey` and shown once.
Later issues add a consumer's `budgets:` and `rate_limits:` with `consumers.add_key(...)`
and a `prices:` section with `section_register(...)`, here.
"""
from __future__ import annotations

from budgets.models import Consumer
from gateway_site.configfile_registry import Field, ModelSection, Plan, section_register

_NO_KEYS = (
    "{key!r}: keys are never written in the configuration file; issue one with "
    "`manage.py issuekey CONSUMER` (it is shown once and only its digest is stored)"
)


def _consumer_prune_note(consumer: Consumer, plan: Plan) -> str:
    count = consumer.keys.count()
    return f" (and its {count} key{'s' if count != 1 else ''})" if count else ""


consumers = section_register(
    ModelSection(
        key="consumers",
        label="consumer",
        model=Consumer,
        identity=Field("name", str, required=True),
        fields=[Field("description", str), Field("active", bool)],
        order=30,
        forbidden={key: _NO_KEYS.format(key=key) for key in ("key", "keys", "api_key", "api_keys", "token")},
        prune_note=_consumer_prune_note,
    )
)
