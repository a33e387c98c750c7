"""Names a package exports without importing them until first use (so `import sc2cli` never imports torch)."""

from __future__ import annotations

import importlib


def export(namespace: dict, exports: dict[str, str], name: str):
    """The attribute `name` of the module `exports[name]`, imported now and kept in `namespace` (a package's
    globals) so the next lookup is an ordinary one. For a package's module-level `__getattr__`."""
    if name not in exports:
        raise AttributeError(f"module {namespace['__name__']!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(exports[name], namespace["__name__"]), name)
    namespace[name] = value
    return value
