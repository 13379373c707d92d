"""Reward plug-ins that misbehave on cue, for the worker-pool tests (stdlib only: workers import this module)."""

import math
import os
import signal
import time
import zlib


def misbehaving(response, record):
    """`hang` sleeps forever, `kill` SIGKILLs its process, `exit` leaves with os._exit, `nan` returns NaN, `pid` its
    process id, `sleep` sleeps 0.3 s; anything else is read as a float (`boom` raises)."""
    if response == "hang":
        time.sleep(3600)
    if response == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if response == "exit":
        os._exit(3)
    if response == "sleep":
        time.sleep(0.3)
        return 0.3
    if response == "pid":
        return float(os.getpid())
    return math.nan if response == "nan" else float(response)


def by_digest(response, record):
    """`misbehaving` on a cue picked from the response's CRC-32 (`cue`): a run's responses hit every kind of failure."""
    return misbehaving(cue(response), record)


def cue(response: str) -> str:
    """An empty response (common from an untrained model) scores 0: validation need not wait on hangs."""
    return {0: "hang", 1: "kill", 2: "exit"}.get(zlib.crc32(response.encode()) % 6 if response else 3, str(len(response)))
