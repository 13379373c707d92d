"""TransferQueue: prompt groups as records of numpy fields, staleness admission, metrics. No model code."""

from rlx.bus.admission import StalenessGate, stale_rows, staleness_metrics, token_staleness, version_lag
from rlx.bus.config import BusConfig
from rlx.bus.queue import BusClosed, Group, TransferQueue

__all__ = ["BusClosed", "BusConfig", "Group", "StalenessGate", "TransferQueue", "stale_rows", "staleness_metrics", "token_staleness", "version_lag"]
