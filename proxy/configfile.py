"""The `providers:` and `routes:` sections of the configuration file (docs/configuration-as-code.md).

Imported by gateway_site.lib.configfile's discovery; `routes` (and its
`deployments` key) and `providers` are the objects later issues extend with
`add_field` / `add_key`.
"""
from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from gateway_site.lib.configfile import (
    MISSING,
    ConfigError,
    ConfigList,
    Field,
    FlowMap,
    Item,
    ModelSection,
    Plan,
    fields_bind,
    mapping_parse,
    model_clean,
    section_register,
    value_describe,
    value_format,
)
from proxy.credentials import (
    CREDENTIAL_FIELDS,
    DOCS,
    credential_change_record,
    credential_changes,
    env_problem,
    file_problem,
)
from proxy.models import Deployment, ModelRoute, Provider, ProviderKind

_CREDENTIAL_REFUSED = (
    "{key!r} would put a credential in the file and the database; name it instead with "
    "api_key_env (an environment variable) or api_key_file (a secret file): "
    "credentials are never stored in the database"
)
# Keys someone might reach for to paste a secret into the file.
_SECRET_KEYS = ("api_key", "apikey", "key", "secret", "token", "password", "credential", "credentials")

# Headers that carry credentials; extra_headers is stored in the database, so they may not go there.
_CREDENTIAL_HEADERS = {"authorization", "proxy-authorization", "x-api-key", "api-key", "x-goog-api-key"}


def _check_extra_headers(headers: dict[str, Any]) -> str | None:
    for name, value in headers.items():
        if not isinstance(name, str) or not isinstance(value, str):
            return (
                f"extra_headers must map header names to strings; quote {value!r} "
                f'(e.g. anthropic-version: "2023-06-01")'
            )
        if name.lower() in _CREDENTIAL_HEADERS:
            return f"extra_headers may not carry {name!r}: " + _CREDENTIAL_REFUSED.format(key=name)
    return None


def _provider_prune_note(provider: Provider, plan: Plan) -> str:
    if "routes" in plan.parsed:
        # Routes not in the file are pruned too, and listed ones cannot name a pruned provider.
        return ""
    users = sorted(set(provider.deployments.values_list("route__model", flat=True)))
    if users:
        raise ConfigError(
            f"{plan.section_where['providers']}: --prune would delete provider {provider.name!r}, "
            f"which route(s) {', '.join(users)} still use; list the provider or the routes in the file"
        )
    return ""


class ProviderSection(ModelSection):
    """Providers. Creating one, or changing base_url, api_key_env or api_key_file, decides which secret
    the gateway reads and where it sends it: refused unless gateway_apply runs with --allow-credentials
    (plan.options["allow_credentials"]), and logged on "tollgate.security" when applied."""

    def diff(self, parsed: list[Item], plan: Plan) -> None:
        plan.cache["credential_changes"] = []
        super().diff(parsed, plan)
        guarded = plan.cache.pop("credential_changes")
        if guarded and not plan.options.get("allow_credentials"):
            raise ConfigError(
                f"{'; '.join(guarded)}: creating a provider, or changing its base_url, api_key_env or "
                "api_key_file, decides which secret the gateway reads and where it sends it. Check these "
                f"changes, then run gateway_apply again with --allow-credentials; see {DOCS}"
            )

    def _diff_create(self, item: Item, plan: Plan) -> None:
        super()._diff_create(item, plan)
        plan.cache["credential_changes"].append(f"{item.where}: new provider {item.name!r}")

    def _diff_update(self, item: Item, obj: Any, plan: Plan) -> None:
        super()._diff_update(item, obj, plan)
        changes = credential_changes(_credential_values(obj), item.values)
        if changes:
            plan.cache["credential_changes"].append(
                f"{item.where}: provider {item.name!r} changes {', '.join(changes)}")

    def _create(self, item: Item) -> None:
        super()._create(item)
        credential_change_record(provider=Provider.objects.get(name=item.name), created=True, via="gateway_apply",
                                 changes=credential_changes(None, item.values))

    def _update(self, item: Item, obj: Any, changed: list[tuple[Field, Any]]) -> None:
        before = _credential_values(obj)
        super()._update(item, obj, changed)
        credential_change_record(provider=obj, created=False, via="gateway_apply",
                                 changes=credential_changes(before, _credential_values(obj)))


def _credential_values(provider: Provider) -> dict[str, str]:
    return {f: getattr(provider, f) for f in CREDENTIAL_FIELDS}


def _check_reference(problem: Callable[[str], str | None]) -> Callable[[str], str | None]:
    # The file's own line for a reference that breaks the rules, before the model's validation names it.
    return lambda value: problem(value) if value else None


providers = section_register(
    ProviderSection(
        key="providers",
        label="provider",
        model=Provider,
        identity=Field("name", str, required=True),
        fields=[
            Field("kind", str, required=True, choices=tuple(ProviderKind.values)),
            Field("base_url", str, required=True),
            Field("api_key_env", str, check=_check_reference(env_problem)),
            Field("api_key_file", str, check=_check_reference(file_problem)),
            Field("timeout_seconds", float, always_export=True),
            Field("connect_timeout_seconds", float),
            Field("extra_headers", dict, check=_check_extra_headers),
            Field("enabled", bool),
        ],
        order=10,
        forbidden={key: _CREDENTIAL_REFUSED.format(key=key) for key in _SECRET_KEYS},
        prune_note=_provider_prune_note,
    )
)


class RouteDeployments:
    """A route's `deployments:` list. It replaces the route's deployments exactly; rows are
    matched by (provider, model), so unchanged ones keep their id."""

    key = "deployments"
    attr_keys = {"upstream_model": "model"}

    def __init__(self) -> None:
        self.match_fields = fields_bind(
            Deployment,
            [Field("provider", str, required=True), Field("model", str, attr="upstream_model", required=True)],
        )
        self.fields = fields_bind(
            Deployment,
            [
                Field("weight", int, always_export=True),
                Field("priority", int, always_export=True),
                Field("enabled", bool),
            ],
        )

    def add_field(self, new: Field) -> Field:
        """Add a deployment key stored in a Deployment column (e.g. a per-deployment limit)."""
        if new.key in {f.key for f in [*self.match_fields, *self.fields]}:
            raise ValueError(f"deployments: key {new.key!r} is already defined")
        bound = new.bind(Deployment)
        self.fields.append(bound)
        return bound

    def parse(self, value: Any, *, where: str) -> list[Item]:
        if not isinstance(value, ConfigList):
            raise ConfigError(f"{where}: deployments must be a list, got {value_describe(value)}")
        parsed: list[Item] = []
        first: dict[tuple[str, str], str] = {}
        for raw, item_where in zip(value, value.item_where, strict=True):
            values = mapping_parse(
                raw, fields=[*self.match_fields, *self.fields], what="deployment", where=item_where
            )
            pair = (values["provider"], values["model"])
            if pair in first:
                raise ConfigError(f"{item_where}: duplicate deployment {pair[0]}/{pair[1]} (first at {first[pair]})")
            first[pair] = item_where
            parsed.append(Item(name=f"{pair[0]}/{pair[1]}", where=item_where, values=values, extras={}))
        return parsed

    def _known_providers(self, plan: Plan) -> tuple[set[str], str]:
        in_file = plan.names("providers")
        if plan.prune and in_file is not None:
            return in_file, "not in the file, so --prune would delete it"
        if "db_provider_names" not in plan.cache:
            plan.cache["db_provider_names"] = set(Provider.objects.values_list("name", flat=True))
        return (in_file or set()) | plan.cache["db_provider_names"], "neither in the file nor in the database"

    def diff(self, *, item: Item, obj: ModelRoute | None, value: Any, plan: Plan) -> None:
        wanted: list[Item] = [] if value is MISSING else value
        known, why = self._known_providers(plan)
        for dep in wanted:
            if dep.values["provider"] not in known:
                raise ConfigError(
                    f"{dep.where}: deployment of route {item.name!r} names unknown provider "
                    f"{dep.values['provider']!r} ({why})"
                )
        current: dict[str, Deployment] = {}
        if obj is not None:
            current = {f"{d.provider.name}/{d.upstream_model}": d for d in obj.deployments.select_related("provider")}
        wanted_names = {dep.name for dep in wanted}
        # Deletions first: the rows that stay never collide with the ones that go.
        for name, gone in current.items():
            if name not in wanted_names:
                plan.add("-", f"deployment {item.name} → {name}", partial(self._delete, gone.pk), where=item.where)
        for dep in wanted:
            row = current.get(dep.name)
            candidate = Deployment(**self._attrs(dep))
            model_clean(
                candidate,
                where=dep.where,
                what="deployment",
                keys=self.attr_keys,
                exclude=["route", "provider"],
                full=False,
            )
            if row is None:
                shown = ", ".join(
                    f"{f.key}={value_format(dep.values[f.key])}"
                    for f in self.fields
                    if f.always_export or dep.values[f.key] != f.default
                )
                plan.add(
                    "+",
                    f"deployment {item.name} → {dep.name} ({shown})",
                    partial(self._create, item.name, dep),
                    where=dep.where,
                )
                continue
            changed = [(f, dep.values[f.key]) for f in self.fields if getattr(row, f.attr) != dep.values[f.key]]
            if changed:
                shown = ", ".join(
                    f"{f.key} {value_format(getattr(row, f.attr))} → {value_format(v)}" for f, v in changed
                )
                plan.add(
                    "~",
                    f"deployment {item.name} → {dep.name}: {shown}",
                    partial(self._update, row, dep, changed),
                    where=dep.where,
                )

    def _attrs(self, dep: Item) -> dict[str, Any]:
        return {"upstream_model": dep.values["model"], **{f.attr: dep.values[f.key] for f in self.fields}}

    def _create(self, route_model: str, dep: Item) -> None:
        row = Deployment(
            route=ModelRoute.objects.get(model=route_model),
            provider=Provider.objects.get(name=dep.values["provider"]),
            **self._attrs(dep),
        )
        model_clean(row, where=dep.where, what="deployment", keys=self.attr_keys)
        row.save()

    def _update(self, row: Deployment, dep: Item, changed: list[tuple[Field, Any]]) -> None:
        for f, value in changed:
            setattr(row, f.attr, value)
        model_clean(row, where=dep.where, what="deployment", keys=self.attr_keys)
        row.save()

    def _delete(self, pk: int) -> None:
        Deployment.objects.filter(pk=pk).delete()

    def export(self, obj: ModelRoute) -> list[FlowMap]:
        rows = []
        for dep in obj.deployments.all():  # prefetched, in the model's order
            row = FlowMap(provider=dep.provider.name, model=dep.upstream_model)
            for f in self.fields:
                value = getattr(dep, f.attr)
                if f.always_export or value != f.default:
                    row[f.key] = f.export(value)
            rows.append(row)
        return rows


def _route_prune_note(route: ModelRoute, plan: Plan) -> str:
    count = route.deployments.count()
    return f" (and its {count} deployment{'s' if count != 1 else ''})" if count else ""


routes = section_register(
    ModelSection(
        key="routes",
        label="route",
        model=ModelRoute,
        identity=Field("model", str, required=True),
        fields=[Field("description", str), Field("default_max_tokens", int), Field("enabled", bool)],
        order=20,
        prefetch=["deployments__provider"],
        prune_note=_route_prune_note,
    )
)
deployments = routes.add_key(RouteDeployments())


# --- Failover, pinning and health (docs/providers.md) ------------------------------------


def _check_failover_statuses(value: list) -> str | None:
    if not all(isinstance(s, int) and not isinstance(s, bool) and 400 <= s <= 599 for s in value):
        return "failover_statuses must be a list of HTTP statuses from 400 to 599, e.g. [429, 500, 503, 529]"
    return None


def _check_not_negative(value: float) -> str | None:
    return "retry_budget_seconds must be 0 or more" if value < 0 else None


routes.add_field(Field("max_retries", int, check=lambda v: "max_retries must be 0 or more" if v < 0 else None))
routes.add_field(Field("retry_budget_seconds", float, check=_check_not_negative))
routes.add_field(Field("failover_statuses", list, check=_check_failover_statuses))
routes.add_field(Field("allow_pin_fallback", bool))
routes.add_field(Field("allow_store", bool))
# What a request may cost (docs/budgets.md, issue #16): the output cap, and the price fields passed through.
routes.add_field(Field("max_output_tokens", int,
                       check=lambda v: "max_output_tokens must be at least 1" if v is not None and v < 1 else None))
routes.add_field(Field("allow_price_fields", bool))
providers.add_field(Field("health_check_interval_seconds", int,
                          check=lambda v: "health_check_interval_seconds must be 0 (off) or more" if v < 0 else None))
