"""The diff between the file and the database, and the writes that close it.

Sections compare what they parsed with the database and add `Change`s to a `Plan`;
nothing is written until `Plan.execute` runs the changes' `apply` callables in
order, so a dry run and the real run report the same lines. `Section` and `ItemKey`
are the two shapes an app implements to take part.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from django.db import IntegrityError
from django.db.models import ProtectedError

from gateway_site.lib.configfile.loading import ConfigError


@dataclass
class Change:
    """One line of the diff and the write that makes it true."""

    sign: str  # "+" create, "~" update, "-" delete
    text: str
    apply: Callable[[], None]
    where: str

    def __str__(self) -> str:
        return f"{self.sign} {self.text}"


@dataclass
class Item:
    """One parsed entry of a model section: its name, values by file key, and its other keys."""

    name: str
    where: str
    values: dict[str, Any]
    extras: dict[str, Any]


@dataclass
class Plan:
    """What applying the file would change. `parsed` holds only the sections present in the file."""

    parsed: dict[str, Any]
    section_where: dict[str, str]
    prune: bool = False
    # What the command was told beyond the file, for sections that guard some changes
    # (proxy's providers: {"allow_credentials": True} from gateway_apply --allow-credentials).
    options: dict[str, Any] = field(default_factory=dict)
    changes: list[Change] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    cache: dict[Any, Any] = field(default_factory=dict)  # for sections' look-ups shared across items

    def add(self, sign: str, text: str, apply: Callable[[], None], *, where: str) -> None:
        self.changes.append(Change(sign, text, apply, where))

    def names(self, section_key: str) -> set[str] | None:
        """Names of the items a model section lists in the file; None when the section is absent."""
        items = self.parsed.get(section_key)
        return None if items is None else {item.name for item in items}

    def execute(self) -> None:
        for change in self.changes:
            try:
                change.apply()
            except ProtectedError as exc:
                users = ", ".join(sorted(str(o) for o in exc.protected_objects))
                raise ConfigError(f"{change.where}: cannot {change}: still used by {users}") from None
            except IntegrityError as exc:
                raise ConfigError(f"{change.where}: the database refused {change}: {exc}") from None


class Section(Protocol):
    """A top-level key of the file. `order` sets apply order; pruning runs in reverse."""

    key: str
    order: int

    def parse(self, value: Any, *, where: str) -> Any: ...
    def diff(self, parsed: Any, plan: Plan) -> None: ...
    def prune(self, parsed: Any, plan: Plan) -> None: ...
    def export(self) -> Any: ...


class ItemKey(Protocol):
    """A key of a section's items that is stored outside the item's row (a route's deployments).

    `diff` gets `obj=None` when the item is created by this same plan (look it up by name
    inside `apply`), and `value=MISSING` when the key is absent from the item. `export`
    returns MISSING to leave the key out.
    """

    key: str

    def parse(self, value: Any, *, where: str) -> Any: ...
    def diff(self, *, item: Item, obj: Any, value: Any, plan: Plan) -> None: ...
    def export(self, obj: Any) -> Any: ...
