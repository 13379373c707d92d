"""Named numpy arrays between processes through POSIX shared memory: the bytes go into one block, only a small
description (`SharedArrays`: block name, and each array's dtype, shape and offset) is pickled onto a pipe.

Blocks are named `<prefix><n>` so that the process that supervises a writer can remove what a writer killed
mid-message left behind (`unlink_leftovers`). Whoever reads a block last unlinks it (`read(..., unlink=True)`).
Python's resource tracker is shared by a process and the children it spawns, so a block that every process
forgets is still removed when the run's tracker ends.
"""

from __future__ import annotations

import dataclasses
import logging
from multiprocessing import shared_memory
from pathlib import Path
from typing import Mapping

import numpy as np

log = logging.getLogger(__name__)
ALIGN = 64  # bytes: each array starts on a cache line
SHM_DIR = Path("/dev/shm")  # where Linux shows the blocks, for `unlink_leftovers`


@dataclasses.dataclass(frozen=True)
class SharedArrays:
    name: str
    layout: tuple[tuple[str, np.dtype, tuple[int, ...], int], ...]  # (key, dtype, shape, byte offset) per array

    @property
    def nbytes(self) -> int:
        return sum(int(np.prod(shape)) * dtype.itemsize for _, dtype, shape, _ in self.layout)


def share(arrays: Mapping[str, np.ndarray], name: str) -> SharedArrays:
    """Copies `arrays` into a new shared-memory block `name` (one copy); the reader unlinks it."""
    arrays = {key: np.ascontiguousarray(value) for key, value in arrays.items()}
    layout, offset = [], 0
    for key, value in arrays.items():
        offset = -(-offset // ALIGN) * ALIGN
        layout.append((key, value.dtype, tuple(value.shape), offset))
        offset += value.nbytes
    block = shared_memory.SharedMemory(name=name, create=True, size=max(offset, 1))
    try:
        for (key, dtype, shape, start), value in zip(layout, arrays.values()):
            np.ndarray(shape, dtype, buffer=block.buf, offset=start)[...] = value
    except BaseException:
        block.unlink()
        raise
    finally:
        block.close()
    return SharedArrays(name, tuple(layout))


def read(shared: SharedArrays, unlink: bool) -> dict[str, np.ndarray]:
    """The arrays of `shared`, copied out of the block (raises FileNotFoundError once it was unlinked)."""
    block = shared_memory.SharedMemory(name=shared.name)
    try:
        return {key: np.ndarray(shape, dtype, buffer=block.buf, offset=start).copy() for key, dtype, shape, start in shared.layout}
    finally:
        block.close()
        if unlink:
            block.unlink()


def unlink(name: str) -> None:
    """Removes block `name` if it still exists."""
    try:
        block = shared_memory.SharedMemory(name=name)
    except FileNotFoundError:
        return
    block.close()
    block.unlink()


def unlink_leftovers(prefix: str) -> int:
    """Removes the blocks named `<prefix>...` (written by a process that died before handing them over); returns how many."""
    names = [path.name for path in SHM_DIR.glob(prefix + "*")] if SHM_DIR.is_dir() else []
    for name in names:
        unlink(name)
    if names:
        log.info("removed %d shared-memory blocks a stopped generator process left (%s*)", len(names), prefix)
    return len(names)
