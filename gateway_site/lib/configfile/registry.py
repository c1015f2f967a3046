"""Which top-level sections exist: each app registers its own from `<app>/configfile.py`.

The ground floor may not import an app, so the apps' modules are found the way the
admin finds `admin.py`: imported by name from every installed app on first use.
"""
from __future__ import annotations

from typing import TypeVar

from django.utils.module_loading import autodiscover_modules

from gateway_site.lib.configfile.plan import Section

_sections: dict[str, Section] = {}
_discovered = False


_S = TypeVar("_S", bound=Section)


def section_register(section: _S) -> _S:
    """Add a top-level section; call it at import time of `<app>/configfile.py`."""
    if _sections.get(section.key, section) is not section:
        raise ValueError(f"configuration section {section.key!r} is registered twice")
    _sections[section.key] = section
    return section


def sections_all() -> list[Section]:
    """Every registered section in apply order, importing the apps' modules the first time."""
    global _discovered
    if not _discovered:
        autodiscover_modules("configfile")
        _discovered = True
    return sorted(_sections.values(), key=lambda s: (s.order, s.key))
