"""Loads user plug-ins (reward functions, hooks) by dotted path `package.module:attribute`."""

from __future__ import annotations

import importlib
from typing import Any

from rlx.errors import UserError


class PluginError(UserError):
    """A plug-in path does not name an importable object; the message says which part failed."""


def load_object(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise PluginError(f"plug-in {path!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except Exception as err:  # ImportError, or anything the module raises while it is imported
        raise PluginError(f"cannot import module {module_name!r} for plug-in {path!r}: {err}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise PluginError(f"module {module_name!r} has no attribute {attribute!r} (plug-in {path!r})") from None
