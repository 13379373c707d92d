"""Per-device memory of compiled programs, and the largest micro-batch whose programs fit.

The figures are XLA's memory analysis of the SPMD-partitioned program for one device, so they
hold on any backend the program is compiled for (on a CPU host: simulated devices).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable


GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class ProgramMemory:
    """Bytes per device of one compiled program."""

    arguments: float
    outputs: float
    aliased: float
    temporaries: float
    compile_s: float

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temporaries


def measure(program: Callable, *args: Any) -> ProgramMemory:
    """Lowers and compiles `program` (a jitted function) for `args` (arrays or ShapeDtypeStructs)."""
    began = time.perf_counter()
    compiled = program.lower(*args).compile()
    elapsed = time.perf_counter() - began
    stats = compiled.memory_analysis()
    return ProgramMemory(float(stats.argument_size_in_bytes), float(stats.output_size_in_bytes),
                         float(stats.alias_size_in_bytes), float(stats.temp_size_in_bytes), elapsed)


def micro_batch_candidates(minibatch_rows: int, row_ways: int) -> list[int]:
    """Micro-batch sizes that split a minibatch evenly and every device evenly, largest first."""
    return [rows for rows in range(minibatch_rows, 0, -1) if minibatch_rows % rows == 0 and rows % row_ways == 0]


Programs = dict[str, tuple[Callable, tuple]]


def largest_fitting(candidates: list[int], programs_for: Callable[[int], Programs], limit_bytes: float) -> tuple[int, dict[str, ProgramMemory]]:
    """The largest of `candidates` (largest first) whose every program fits `limit_bytes` per device, with its
    programs' memory; the smallest if none fits. The largest is tried first, then bisection (memory grows
    with the micro-batch size)."""
    measured: dict[int, dict[str, ProgramMemory]] = {}

    def fits(index: int) -> bool:
        rows = candidates[index]
        measured[rows] = {name: measure(fn, *args) for name, (fn, args) in programs_for(rows).items()}
        return all(m.peak <= limit_bytes for m in measured[rows].values())

    low, high = 0, len(candidates) - 1
    if fits(low):
        return candidates[low], measured[candidates[low]]
    if high == low or not fits(high):
        return candidates[high], measured[candidates[high]]
    while high - low > 1:  # candidates[low] does not fit, candidates[high] does
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return candidates[high], measured[candidates[high]]
