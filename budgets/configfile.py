"""The `teams:` and `consumers:` sections of the configuration file (docs/configuration-as-code.md).

Keys are never part of it: they are issued with `manage.py issuekey` and shown once.
A team's and a consumer's `budgets:`, a consumer's `team:` and `rate_limits:`, and the
top-level `prices:` section are below (docs/budgets.md), and so is a consumer's `audit:`
body mode (docs/audit.md): it configures a consumer, so it lives with the consumers,
and audit never imports budgets.
"""
from __future__ import annotations

from functools import partial
from typing import Any

from django.utils import timezone

from audit.models import BodyMode
from budgets.binding import networks_problem, user_agents_problem
from budgets.models import Budget, Consumer, Metric, Mode, ModelPrice, Period, RateLimit, Team, routes_normalize
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

_NO_KEYS = (
    "{key!r}: keys are never written in the configuration file; issue one with "
    "`manage.py issuekey CONSUMER` (it is shown once and only its digest is stored)"
)


def _consumer_prune_note(consumer: Consumer, plan: Plan) -> str:
    count = consumer.keys.count()
    return f" (and its {count} key{'s' if count != 1 else ''})" if count else ""


# Before consumers (order 30), which name their team.
teams = section_register(
    ModelSection(
        key="teams",
        label="team",
        model=Team,
        identity=Field("name", str, required=True),
        fields=[Field("active", bool)],
        order=25,
        prune_note=lambda team, plan: " (and its budgets; its consumers stay, in no team)",
    )
)


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


# Who may use the consumer's keys (docs/admin.md#key-binding); each key may narrow it (admin, API).
consumers.add_field(Field("allowed_networks", list, check=networks_problem))
consumers.add_field(Field("allowed_user_agents", list, check=user_agents_problem))


# --- budgets:, rate_limits: and prices: (issue 4, docs/budgets.md) ------------------

MICRO = 1_000_000


def _usd_to_micro(value: float) -> int:
    return round(value * MICRO)


def _micro_to_usd(value: int) -> float | int:
    usd = value / MICRO
    return int(usd) if usd.is_integer() else usd


def _non_negative(what: str):
    return lambda value: None if value >= 0 else f"{what} must be >= 0, got {value}"


def _routes_problem(value: list) -> str | None:
    if not all(isinstance(route, str) and route.strip() for route in value):
        return 'routes must be a list of route names, e.g. [opus]; left out: every route'
    return None


class OwnedRows:
    """A team's or a consumer's own `budgets:`, or a consumer's `rate_limits:` list (key-level rows
    are left alone).

    Rows are matched by `identity` (a budget by metric, period and routes, a rate limit by
    what it counts and its window) and updated in place, so editing a limit never resets the
    usage counted so far. The list replaces the owner's rows: rows not listed go.
    """

    def __init__(self, *, key: str, label: str, model, fields: list[Field], owner: type[Team | Consumer]) -> None:
        self.key = key
        self.label = label
        self.model = model
        self.fields = fields_bind(model, fields)
        self.owner_model = owner
        self.owner: str = owner._meta.model_name or ""  # the row's foreign key: "consumer" or "team"

    # Subclasses: identity, file-to-model conversion and back.
    def identity(self, values: dict[str, Any]) -> tuple:
        raise NotImplementedError

    def to_attrs(self, values: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def from_row(self, row) -> dict[str, Any]:
        raise NotImplementedError

    def check(self, values: dict[str, Any], where: str) -> None: ...

    def parse(self, value: Any, *, where: str) -> list[Item]:
        if not isinstance(value, ConfigList):
            raise ConfigError(f"{where}: {self.key} must be a list, got {value_describe(value)}")
        parsed: list[Item] = []
        first: dict[tuple, str] = {}
        for raw, item_where in zip(value, value.item_where, strict=True):
            values = mapping_parse(raw, fields=self.fields, what=self.label, where=item_where)
            self.check(values, item_where)
            ident = self.identity(values)
            if ident in first:
                raise ConfigError(f"{item_where}: duplicate {self.label} {self._name(ident)} (first at {first[ident]})")
            first[ident] = item_where
            parsed.append(Item(name=self._name(ident), where=item_where, values=values, extras={"identity": ident}))
        return parsed

    @staticmethod
    def _name(ident: tuple) -> str:
        name = "/".join(str(part) for part in ident if not isinstance(part, tuple))
        routes = [part for part in ident if isinstance(part, tuple) and part]
        return name + "".join(f" on {', '.join(part)}" for part in routes)

    def _current(self, obj: Team | Consumer | None) -> dict[tuple, Any]:
        if obj is None:
            return {}
        rows = self.model.objects.filter(**{self.owner: obj}).order_by("id")
        return {self.identity(self.from_row(row)): row for row in rows}

    def diff(self, *, item: Item, obj: Team | Consumer | None, value: Any, plan: Plan) -> None:
        wanted: list[Item] = [] if value is MISSING else value
        current = self._current(obj)
        wanted_ids = {w.extras["identity"] for w in wanted}
        for ident, row in current.items():
            if ident not in wanted_ids:
                plan.add("-", f"{self.label} {item.name} {self._name(ident)}",
                         partial(self._delete, row.pk), where=item.where)
        for w in wanted:
            attrs = self.to_attrs(w.values)
            model_clean(self.model(**attrs), where=w.where, what=self.label, keys={},
                        exclude=["team", "consumer", "key"], full=False)
            row = current.get(w.extras["identity"])
            if row is None:
                shown = ", ".join(f"{k}={value_format(v)}" for k, v in self._shown(w.values).items())
                plan.add("+", f"{self.label} {item.name} ({shown})", partial(self._create, item.name, w),
                         where=w.where)
                continue
            have = self.from_row(row)
            changed = {k: v for k, v in w.values.items() if have.get(k) != v}
            if changed:
                shown = ", ".join(f"{k} {value_format(have.get(k))} → {value_format(v)}" for k, v in changed.items())
                plan.add("~", f"{self.label} {item.name} {w.name}: {shown}", partial(self._update, row.pk, w),
                         where=w.where)

    def _shown(self, values: dict[str, Any]) -> dict[str, Any]:
        return {f.key: values[f.key] for f in self.fields
                if f.required or f.always_export or values[f.key] != f.default}

    def _create(self, owner_name: str, w: Item) -> None:
        # By name: the owner may be created by this same plan.
        row = self.model(**{self.owner: self.owner_model.objects.get(name=owner_name)}, **self.to_attrs(w.values))
        model_clean(row, where=w.where, what=self.label, keys={})
        row.save()

    def _update(self, pk: int, w: Item) -> None:
        row = self.model.objects.get(pk=pk)
        for attr, value in self.to_attrs(w.values).items():
            setattr(row, attr, value)
        model_clean(row, where=w.where, what=self.label, keys={})
        row.save()

    def _delete(self, pk: int) -> None:
        self.model.objects.filter(pk=pk).delete()

    def export(self, obj: Team | Consumer) -> Any:
        rows = self.model.objects.filter(**{self.owner: obj}).order_by("id")
        rows = [FlowMap(self._shown(self.from_row(row))) for row in rows]
        return rows or MISSING


class OwnedBudgets(OwnedRows):
    def __init__(self, owner: type[Team | Consumer]) -> None:
        super().__init__(key="budgets", label="budget", model=Budget, owner=owner, fields=[
            Field("metric", str, required=True, choices=tuple(Metric.values)),
            Field("limit", float, required=True, check=_non_negative("limit")),
            Field("period", str, choices=tuple(Period.values), always_export=True),
            Field("timezone", str),
            Field("mode", str, choices=tuple(Mode.values)),
            # Route names it counts and limits ("$50/day of opus"); left out: every route.
            Field("routes", list, check=_routes_problem),
            Field("alert_at_percent", int, nullable=True),
            Field("alert_email", str),
            Field("alert_webhook", str),
            Field("enabled", bool),
        ])

    def check(self, values: dict[str, Any], where: str) -> None:
        values["routes"] = routes_normalize(values["routes"])
        limit = values["limit"]
        if values["metric"] != Metric.COST_USD:
            if not float(limit).is_integer():
                raise ConfigError(f"{where}: a {values['metric']} budget's limit must be a whole number, got {limit}")
            values["limit"] = int(limit)
        elif float(limit).is_integer():
            values["limit"] = int(limit)

    def identity(self, values: dict[str, Any]) -> tuple:
        # A budget of opus and one of every route may share a metric and a period.
        return (values["metric"], values["period"], tuple(values["routes"]))

    def to_attrs(self, values: dict[str, Any]) -> dict[str, Any]:
        attrs = dict(values)
        if values["metric"] == Metric.COST_USD:
            attrs["limit"] = _usd_to_micro(values["limit"])  # the file says dollars
        return attrs

    def from_row(self, row: Budget) -> dict[str, Any]:
        values = {f.key: getattr(row, f.attr) for f in self.fields}
        values["routes"] = routes_normalize(row.routes or [])
        if row.metric == Metric.COST_USD:
            values["limit"] = _micro_to_usd(row.limit)
        return values


class ConsumerRateLimits(OwnedRows):
    def __init__(self) -> None:
        super().__init__(key="rate_limits", label="rate limit", model=RateLimit, owner=Consumer, fields=[
            Field("requests", int, nullable=True),
            Field("tokens", int, nullable=True),
            Field("window_seconds", int, always_export=True),
            Field("rejected_code", int),
            Field("rejected_msg", str),
            Field("enabled", bool),
        ])

    def check(self, values: dict[str, Any], where: str) -> None:
        if (values["requests"] is None) == (values["tokens"] is None):
            raise ConfigError(f"{where}: a rate limit counts either requests or tokens: give exactly one of them")

    def identity(self, values: dict[str, Any]) -> tuple:
        return ("requests" if values["requests"] is not None else "tokens", values["window_seconds"])

    def to_attrs(self, values: dict[str, Any]) -> dict[str, Any]:
        return dict(values)

    def from_row(self, row: RateLimit) -> dict[str, Any]:
        return {f.key: getattr(row, f.attr) for f in self.fields}


# --- team: the team a consumer belongs to (docs/budgets.md#teams) --------------------


class ConsumerTeam:
    """A consumer's `team:` key, the name of a team in the file or the database; left out: no team."""

    key = "team"

    def parse(self, value: Any, *, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{where}: team must be a team's name, got {value_describe(value)}")
        return value

    @staticmethod
    def _known(plan: Plan) -> tuple[set[str], str]:
        in_file = plan.names("teams")
        if plan.prune and in_file is not None:
            return in_file, "not in the file, so --prune would delete it"
        if "db_team_names" not in plan.cache:
            plan.cache["db_team_names"] = set(Team.objects.values_list("name", flat=True))
        return (in_file or set()) | plan.cache["db_team_names"], "neither in the file nor in the database"

    def diff(self, *, item: Item, obj: Consumer | None, value: Any, plan: Plan) -> None:
        wanted = None if value is MISSING else value
        if wanted is not None:
            known, why = self._known(plan)
            if wanted not in known:
                raise ConfigError(f"{item.where}: consumer {item.name!r} names unknown team {wanted!r} ({why})")
        have = obj.team.name if obj is not None and obj.team is not None else None
        if wanted == have:
            return
        if wanted is None:
            text = f"team of {item.name}: {have} → none"
        elif have is None:
            text = f"team of {item.name}: {wanted}"
        else:
            text = f"team of {item.name}: {have} → {wanted}"
        plan.add("~" if obj is not None else "+", text, partial(self._set, item.name, wanted), where=item.where)

    @staticmethod
    def _set(consumer_name: str, team_name: str | None) -> None:
        # By name: either may be created by this same plan.
        consumer = Consumer.objects.get(name=consumer_name)
        consumer.team = None if team_name is None else Team.objects.get(name=team_name)
        consumer.save(update_fields=["team"])  # save(): post_save drops every worker's key and limits entries

    def export(self, obj: Consumer) -> Any:
        return MISSING if obj.team is None else obj.team.name


# In this order in an export: a consumer's team, then its budgets and rate limits.
consumers.add_key(ConsumerTeam())
consumers.add_key(OwnedBudgets(Consumer))
consumers.add_key(ConsumerRateLimits())
teams.add_key(OwnedBudgets(Team))


# --- audit: a consumer's audit body mode (docs/audit.md) ----------------------------
#
#     consumers:
#       - name: alice-agent
#         audit: full        # none | metadata | full; left out: TOLLGATE_AUDIT_DEFAULT_BODY_MODE
#
# The two functions below are the only code that knows where the mode is stored
# (the nullable column Consumer.audit_body_mode, null meaning the default).


def _body_mode_get(consumer: Consumer) -> str | None:
    """The consumer's own body mode; None when the default from settings applies."""
    return consumer.audit_body_mode


def _body_mode_set(consumer: Consumer, mode: str | None) -> None:
    """Store the consumer's own body mode; None goes back to the default from settings."""
    consumer.audit_body_mode = mode
    consumer.save(update_fields=["audit_body_mode"])  # save(): post_save drops every worker's key entries


class ConsumerAudit:
    """A consumer's `audit:` key; left out means the default mode."""

    key = "audit"

    def parse(self, value: Any, *, where: str) -> str:
        if not isinstance(value, str) or value not in BodyMode.values:
            raise ConfigError(f"{where}: audit must be one of {', '.join(BodyMode.values)} "
                              f"(the body mode), got {value_describe(value)}")
        return value

    def diff(self, *, item: Item, obj: Consumer | None, value: Any, plan: Plan) -> None:
        have = None if obj is None else _body_mode_get(obj)
        if value is MISSING:
            if have is not None:
                plan.add("-", f"audit policy of {item.name} ({have}; the default applies)",
                         partial(self._set, item.name, None), where=item.where)
        elif value != have:
            sign, text = ("+", f"audit policy of {item.name} ({value})") if have is None else \
                ("~", f"audit policy of {item.name}: {have} → {value}")
            plan.add(sign, text, partial(self._set, item.name, value), where=item.where)

    @staticmethod
    def _set(consumer_name: str, mode: str | None) -> None:
        # By name: the consumer may be created by this same plan.
        _body_mode_set(Consumer.objects.get(name=consumer_name), mode)

    def export(self, obj: Consumer) -> Any:
        mode = _body_mode_get(obj)
        return MISSING if mode is None else mode


# After budgets: and rate_limits:, so an export lists a consumer's keys in the same order as before.
consumers.add_key(ConsumerAudit())


# `prices:` keys of the token classes: (file key, ModelPrice column). Input and output are
# required; an absent class costs what its parent class costs (see ModelPrice).
_PRICE_CLASSES = (
    ("input_per_million_usd", "input_per_million"),
    ("cached_input_per_million_usd", "cached_input_per_million"),
    ("cache_write_per_million_usd", "cache_write_per_million"),
    ("cache_write_1h_per_million_usd", "cache_write_1h_per_million"),
    ("output_per_million_usd", "output_per_million"),
    ("reasoning_output_per_million_usd", "reasoning_output_per_million"),
)
_REQUIRED_CLASSES = ("input_per_million_usd", "output_per_million_usd")
_PRICE_KEYS = {column: key for key, column in _PRICE_CLASSES}


class PricesSection:
    """`prices:` the price table, one item per (provider, model), each token class in dollars
    per million tokens (docs/budgets.md). A changed price is a new row valid from now, so
    past costs keep the price they were charged at; an unchanged one changes nothing."""

    key = "prices"
    order = 40

    def __init__(self) -> None:
        self.fields = fields_bind(None, [
            Field("model", str, required=True),
            Field("provider", str, default=""),
            *(Field(key, float, required=key in _REQUIRED_CLASSES, default=None, nullable=key not in _REQUIRED_CLASSES,
                    check=_non_negative(key)) for key, _column in _PRICE_CLASSES),
            Field("source", str, default=""),
            Field("note", str, default=""),
        ])

    @staticmethod
    def _name(provider: str, model: str) -> str:
        return f"{model} via {provider}" if provider else model

    def parse(self, value: Any, *, where: str) -> list[Item]:
        if not isinstance(value, ConfigList):
            raise ConfigError(f"{where}: 'prices' must be a list of prices, got {value_describe(value)}")
        parsed: list[Item] = []
        first: dict[tuple[str, str], str] = {}
        for raw, item_where in zip(value, value.item_where, strict=True):
            values = mapping_parse(raw, fields=self.fields, what="price", where=item_where)
            ident = (values["provider"], values["model"])
            name = self._name(*ident)
            if ident in first:
                raise ConfigError(f"{item_where}: duplicate price for {name!r} (first at {first[ident]})")
            first[ident] = item_where
            parsed.append(Item(name=name, where=item_where, values=values, extras={"identity": ident}))
        return parsed

    @staticmethod
    def _current() -> dict[tuple[str, str], ModelPrice]:
        current: dict[tuple[str, str], ModelPrice] = {}
        rows = ModelPrice.objects.filter(valid_from__lte=timezone.now()).order_by("provider", "model", "-valid_from")
        for row in rows:
            current.setdefault((row.provider, row.model), row)
        return current

    @staticmethod
    def _columns(values: dict[str, Any]) -> dict[str, Any]:
        columns: dict[str, Any] = {column: None if values[key] is None else _usd_to_micro(values[key])
                                   for key, column in _PRICE_CLASSES}
        return {**columns, "source": values["source"], "note": values["note"]}

    def diff(self, parsed: list[Item], plan: Plan) -> None:
        current = self._current()
        for item in parsed:
            columns = self._columns(item.values)
            provider, model = item.extras["identity"]
            model_clean(ModelPrice(model=model, provider=provider, **columns), where=item.where, what="price",
                        keys=_PRICE_KEYS, full=False)
            row = current.get(item.extras["identity"])
            shown = ", ".join(f"{key.removesuffix('_per_million_usd')} ${value_format(item.values[key])}"
                              for key, _column in _PRICE_CLASSES if item.values[key] is not None)
            if row is None:
                plan.add("+", f"price {item.name} ({shown} per million tokens)",
                         partial(self._create, item, columns), where=item.where)
            elif any(getattr(row, column) != value for column, value in columns.items()):
                plan.add("~", f"price {item.name}: {shown} per million tokens, from now on",
                         partial(self._create, item, columns), where=item.where)

    @staticmethod
    def _create(item: Item, columns: dict[str, Any]) -> None:
        provider, model = item.extras["identity"]
        price = ModelPrice(model=model, provider=provider, valid_from=timezone.now(), **columns)
        model_clean(price, where=item.where, what="price", keys=_PRICE_KEYS)
        price.save()

    def prune(self, parsed: list[Item], plan: Plan) -> None:
        listed = {item.extras["identity"] for item in parsed}
        for provider, model in sorted(set(ModelPrice.objects.values_list("provider", "model")) - listed):
            name = self._name(provider, model)
            if not plan.prune:
                plan.left_alone.append(f"price {name}")
                continue
            plan.add("-", f"price {name}", partial(self._delete, provider, model), where=plan.section_where[self.key])

    @staticmethod
    def _delete(provider: str, model: str) -> None:
        ModelPrice.objects.filter(provider=provider, model=model).delete()

    def export(self) -> list[FlowMap]:
        rows = []
        for (provider, model), row in sorted(self._current().items(), key=lambda item: (item[0][1], item[0][0])):
            entry = FlowMap(model=model)
            if provider:
                entry["provider"] = provider
            for key, column in _PRICE_CLASSES:
                if getattr(row, column) is not None:
                    entry[key] = _micro_to_usd(getattr(row, column))
            for key in ("source", "note"):
                if getattr(row, key):
                    entry[key] = getattr(row, key)
            rows.append(entry)
        return rows


prices = section_register(PricesSection())
