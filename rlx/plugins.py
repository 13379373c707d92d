"""Loads user plug-ins (reward functions, hooks) by dotted path `package.module:attribute`."""

from __future__ import annotations

import importlib
from typing import Any


def load_object(path: str) -> Any:
    module_name, sep, attribute = path.partition(":")
    if not sep or not module_name or not attribute:
        raise ValueError(f"plug-in {path!r} must look like 'package.module:attribute'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"cannot import module {module_name!r} for plug-in {path!r}: {err}") from None
    try:
        return getattr(module, attribute)
    except AttributeError:
        raise ValueError(f"module {module_name!r} has no attribute {attribute!r} (plug-in {path!r})") from None
