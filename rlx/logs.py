"""rlx's own log output: a handler on the `rlx` logger, whatever a library did to the root logger.

Libraries rlx imports configure the root logger at import (absl, JetStream), which makes
`logging.basicConfig` a no-op and leaves the root at WARNING, so rlx's INFO lines ("resumed from
...") would never show. Commands call `configure_logging(config.run.log_level)` instead.
"""

from __future__ import annotations

import logging
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class _RlxHandler(logging.StreamHandler):
    """Writes to the current `sys.stderr` (a caller may swap it, e.g. to capture a command's output); its type marks
    the handler rlx installed, so configuring twice adds no second one."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def configure_logging(level: str = "INFO") -> None:
    """rlx's loggers print at `level` and above to stderr; other libraries keep their own settings."""
    logger = logging.getLogger("rlx")
    if not any(isinstance(handler, _RlxHandler) for handler in logger.handlers):
        handler = _RlxHandler()
        handler.setFormatter(logging.Formatter(FORMAT))
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False  # the root's handler (absl's) would print each line a second time
