"""`manage.py gateway_export`'s entry point: the database written back in the file's own shape.

The dumper is tuned so that an export reads like the documentation's examples
(list items indented under their key, short rows on one line, no YAML anchors),
because people keep the exported file under version control and edit it.
"""
from __future__ import annotations

from typing import Any

import yaml

from gateway_site.lib.configfile.fields import FlowMap
from gateway_site.lib.configfile.registry import sections_all


class _Dumper(yaml.SafeDumper):
    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, as the documentation writes them.
        return super().increase_indent(flow, False)

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _represent_str(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    style = "|" if "\n" in data else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", data, style=style)


_Dumper.add_representer(str, _represent_str)
_Dumper.add_representer(
    FlowMap, lambda dumper, data: dumper.represent_mapping("tag:yaml.org,2002:map", data.items(), flow_style=True)
)

EXPORT_HEADER = (
    "# Tollgate configuration, written by `manage.py gateway_export`; apply with `manage.py gateway_apply`.\n"
    "# Credentials are named (api_key_env / api_key_file), never included; keys come from `manage.py issuekey`.\n"
)


def config_export() -> str:
    """The database's configuration in the format gateway_apply reads."""
    blocks = [
        yaml.dump({s.key: s.export()}, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=1000)
        for s in sections_all()
    ]
    return EXPORT_HEADER + "\n".join(blocks)
