"""Staleness admission: how far the generator may run ahead of the learner.

Versions count learner updates: version `v` is the weights after `v` steps, and step `s`
trains on the weights of version `s - 1`. A token sampled with version `b` and trained at step
`s` is `s - 1 - b` versions stale. The generator may start step `s`'s rollouts only once the
learner has published version `s - 1 - max_staleness`, so no admitted token is staler than
`max_staleness`; the learner still checks each group (`stale_rows`) and drops, and counts, any
that is, so a stale sample is never trained on silently.
"""

from __future__ import annotations

import threading

import numpy as np

from rlx.bus.queue import BusClosed


class StalenessGate:
    def __init__(self, max_staleness: int, published: int = 0):
        if max_staleness < 0:
            raise ValueError(f"max_staleness must be >= 0, got {max_staleness}")
        self.max_staleness = max_staleness
        self.published = published
        self._changed = threading.Condition()
        self._closed = False

    def admits(self, step: int) -> bool:
        return step - 1 - self.published <= self.max_staleness

    def wait_until_admitted(self, step: int, timeout: float | None = None) -> None:
        """Blocks until step `step`'s rollouts may start; raises BusClosed after `close`."""
        with self._changed:
            if not self._changed.wait_for(lambda: self._closed or self.admits(step), timeout):
                raise TimeoutError(f"step {step} not admitted within {timeout} s (learner at version {self.published})")
            if self._closed:
                raise BusClosed(f"closed while step {step} waited for admission")

    def publish(self, version: int) -> None:
        """The learner finished (and published) weights `version`."""
        with self._changed:
            self.published = max(self.published, version)
            self._changed.notify_all()

    def close(self) -> None:
        with self._changed:
            self._closed = True
            self._changed.notify_all()


def version_lag(versions: np.ndarray, train_step: int) -> tuple[np.ndarray, np.ndarray]:
    """(lag, real), shaped like `versions`: how many versions each token is behind the weights that
    train step `train_step` updates (`train_step - 1`), and which entries are real tokens (version >= 0)."""
    versions = np.asarray(versions)
    return (train_step - 1 - versions).astype(np.int64), versions >= 0


def token_staleness(versions: np.ndarray, train_step: int) -> np.ndarray:
    """The lag of every real token, flattened."""
    lag, real = version_lag(versions, train_step)
    return lag[real]


def stale_rows(versions: np.ndarray, train_step: int, max_staleness: int) -> np.ndarray:
    """[rows] bool: rows holding a token staler than `max_staleness` at `train_step`."""
    lag, real = version_lag(versions, train_step)
    return np.any(real & (lag > max_staleness), axis=1)


def staleness_metrics(staleness: np.ndarray) -> dict[str, float]:
    """`training/off_policy/staleness_{mean,max}` and a histogram `.../staleness_hist/{k}` (token fractions)."""
    if staleness.size == 0:
        return {"training/off_policy/staleness_mean": 0.0, "training/off_policy/staleness_max": 0.0}
    metrics = {
        "training/off_policy/staleness_mean": float(staleness.mean()),
        "training/off_policy/staleness_max": float(staleness.max()),
    }
    values, counts = np.unique(staleness, return_counts=True)
    metrics.update({f"training/off_policy/staleness_hist/{v}": float(c) / staleness.size for v, c in zip(values, counts)})
    return metrics
