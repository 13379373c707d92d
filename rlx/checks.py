"""Value checks shared by the config dataclasses of every room."""

from __future__ import annotations


def require_positive(config: object, *names: str) -> None:
    """Raises ValueError naming the first of `names` whose value on `config` is below 1."""
    for name in names:
        value = getattr(config, name)
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}")
