"""Reading the YAML file into values that remember the line they were written on.

Every error the configuration file can produce names `file:line:`, so the loader
keeps a mark on each mapping, key and list item; the rest of the package reads
those marks and never sees a line number otherwise.
"""
from __future__ import annotations

from typing import Any

import yaml


class ConfigError(Exception):
    """A problem with the file; the message starts with `file:line:`."""


class ConfigMap(dict):
    """A YAML mapping that remembers where it and each of its keys were written."""

    where: str
    key_where: dict[Any, str]


class ConfigList(list):
    """A YAML sequence that remembers where it and each of its items were written."""

    where: str
    item_where: list[str]


class _Loader(yaml.SafeLoader):
    filename = "<config>"

    def where(self, node: yaml.Node) -> str:
        return f"{self.filename}:{node.start_mark.line + 1}"


def _construct_map(loader: _Loader, node: yaml.MappingNode):  # type: ignore[no-untyped-def]
    data = ConfigMap()
    data.where = loader.where(node)
    data.key_where = {}
    yield data
    # PyYAML silently keeps the last of two equal keys; in a config file that is a typo.
    first: dict[Any, yaml.Node] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=True)
        try:
            hash(key)
        except TypeError:
            raise ConfigError(f"{loader.where(key_node)}: a key must be a plain value") from None
        if key in first:
            raise ConfigError(
                f"{loader.where(key_node)}: duplicate key {key!r} "
                f"(first at line {first[key].start_mark.line + 1})"
            )
        first[key] = key_node
    loader.flatten_mapping(node)  # resolves `<<:` merge keys; later keys override merged ones
    for key_node, value_node in node.value:
        key = loader.construct_object(key_node, deep=True)
        data[key] = loader.construct_object(value_node, deep=True)
        data.key_where[key] = loader.where(key_node)


def _construct_seq(loader: _Loader, node: yaml.SequenceNode):  # type: ignore[no-untyped-def]
    data = ConfigList()
    data.where = loader.where(node)
    data.item_where = [loader.where(child) for child in node.value]
    yield data
    data.extend(loader.construct_object(child, deep=True) for child in node.value)


_Loader.add_constructor("tag:yaml.org,2002:map", _construct_map)
_Loader.add_constructor("tag:yaml.org,2002:seq", _construct_seq)


def config_load(text: str, *, filename: str) -> ConfigMap:
    """Parse YAML text into ConfigMap/ConfigList values that know their lines."""
    loader = _Loader(text)
    loader.filename = filename
    try:
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{filename}{line}: not valid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{filename}: not valid YAML: {exc}") from None
    finally:
        loader.dispose()
    if data is None:  # an empty file
        data = ConfigMap()
        data.where, data.key_where = f"{filename}:1", {}
    if not isinstance(data, ConfigMap):
        raise ConfigError(f"{filename}:1: the file must be a mapping of sections (providers:, routes:, ...)")
    return data
