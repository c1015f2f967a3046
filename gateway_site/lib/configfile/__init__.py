"""Configuration as code: the framework behind `manage.py gateway_apply` and `gateway_export`.

See docs/configuration-as-code.md. It sits on the ground floor, not in proxy, because
every app uses it to describe its own section and budgets must never import proxy.
Each app declares its sections in `<app>/configfile.py`, imported on first use (as the
admin discovers `admin.py`), so no app edits another's code.

A section is one top-level key of the file. It parses its value (checking keys, types
and lines), adds `Change`s to a `Plan` by comparing with the database, and exports the
database back to the same shape. Applying a plan runs the changes' `apply` callables
in order, inside one transaction.

The modules, each importing only those above it in this list:
`loading` (YAML with line marks, ConfigError), `fields` (Field, value rendering),
`plan` (Plan, Change, Item, the Section and ItemKey shapes), `model_section`
(ModelSection, model_clean), `registry` (section_register, discovery), `apply` and
`export` (the two commands' entry points). Apps import from this package; the
submodules never import it back.
"""
from __future__ import annotations

from gateway_site.lib.configfile.apply import config_apply, config_plan
from gateway_site.lib.configfile.export import EXPORT_HEADER, config_export
from gateway_site.lib.configfile.fields import (
    MISSING,
    MODEL_DEFAULT,
    Field,
    FlowMap,
    fields_bind,
    mapping_parse,
    value_describe,
    value_format,
)
from gateway_site.lib.configfile.loading import ConfigError, ConfigList, ConfigMap, config_load
from gateway_site.lib.configfile.model_section import ModelSection, model_clean
from gateway_site.lib.configfile.plan import Change, Item, ItemKey, Plan, Section
from gateway_site.lib.configfile.registry import section_register, sections_all

__all__ = [
    "EXPORT_HEADER",
    "MISSING",
    "MODEL_DEFAULT",
    "Change",
    "ConfigError",
    "ConfigList",
    "ConfigMap",
    "Field",
    "FlowMap",
    "Item",
    "ItemKey",
    "ModelSection",
    "Plan",
    "Section",
    "config_apply",
    "config_export",
    "config_load",
    "config_plan",
    "fields_bind",
    "mapping_parse",
    "model_clean",
    "section_register",
    "sections_all",
    "value_describe",
    "value_format",
]
