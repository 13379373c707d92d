"""Services: run roles and loops. Contains no algorithm logic."""

from rlx.services.loop import train

__all__ = ["train"]
