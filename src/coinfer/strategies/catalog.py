"""Imports every strategy module of this package so each registers itself by name.

A new strategy is a new module here that decorates its planner with
``@register(...)``; nothing else needs editing.
"""

import importlib
import pkgutil
from pathlib import Path

_SKIP = {"registry", "common", "catalog"}

for _info in sorted(pkgutil.iter_modules([str(Path(__file__).parent)]), key=lambda i: i.name):
    if not _info.name.startswith("_") and _info.name not in _SKIP:
        importlib.import_module(f"{__package__}.{_info.name}")
