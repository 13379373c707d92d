"""Device meshes, sharding-rule presets per role, and multi-host start-up settings."""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlx.parallel.presets import PRESETS

MESH_AXES = ("data", "fsdp", "tensor", "expert")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Sizes of the mesh axes of one device slice; the slice uses their product of devices."""

    data: int = 1
    fsdp: int = 1
    tensor: int = 1
    expert: int = 1

    def __post_init__(self) -> None:
        for axis in MESH_AXES:
            if getattr(self, axis) < 1:
                raise ValueError(f"mesh axis {axis} must be >= 1, got {getattr(self, axis)}")

    @property
    def shape(self) -> dict[str, int]:
        return {axis: getattr(self, axis) for axis in MESH_AXES}

    @property
    def size(self) -> int:
        size = 1
        for axis in MESH_AXES:
            size *= getattr(self, axis)
        return size


@dataclasses.dataclass(frozen=True)
class DistributedConfig:
    """`jax.distributed` start-up. `off`: one process. `auto`: JAX detects the cluster (TPU pods,
    SLURM, Open MPI). `explicit`: coordinator, process count and id from here, or from the
    environment variables RLX_COORDINATOR_ADDRESS / RLX_NUM_PROCESSES / RLX_PROCESS_ID
    (what `launch/*.sh` set per host, so every host can share one config file).

    `timeout_s` bounds joining the cluster and every host-side wait for the other processes (metrics,
    validation results); `heartbeat_timeout_s` is how long a silent process may stay silent before the
    coordinator declares it dead and stops every other process with an error."""

    mode: Literal["off", "auto", "explicit"] = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300
    heartbeat_timeout_s: int = 100

    def __post_init__(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise ValueError(f"process_id must be >= 0, got {self.process_id}")
        for field in ("timeout_s", "heartbeat_timeout_s"):
            if getattr(self, field) < 1:
                raise ValueError(f"{field} must be >= 1, got {getattr(self, field)}")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Where the learner and the generator run, and how their weights are sharded.

    `colocated`: both use the same devices (time-shared), so their meshes must have the same
    size. `disaggregated`: the learner takes the first `learner.size` devices and the
    generator the next `generator.size`. Rule presets are named in `rlx.parallel.presets.PRESETS`.

    With several processes (`distributed`), `learner` is one mesh over `learner.size / P` devices of
    each of the P processes, and `generator` is the mesh of each process's own generator replica on
    its own devices (colocated: the same devices as its share of the learner, so
    `learner.size == P * generator.size`; disaggregated: the next `generator.size` of its devices).
    `device_memory_gib` is what the dry-run plan checks each device's footprint against, and what
    `learner.micro_batch_rows: auto` fits into where a device reports no limit of its own.
    """

    learner: MeshConfig = MeshConfig()
    generator: MeshConfig = MeshConfig()
    learner_rules: str = "fsdp"
    generator_rules: str = "serve_tp"
    placement: Literal["colocated", "disaggregated"] = "colocated"
    device_memory_gib: float = 16.0
    distributed: DistributedConfig = DistributedConfig()

    def __post_init__(self) -> None:
        for field in ("learner_rules", "generator_rules"):
            name = getattr(self, field)
            if name not in PRESETS:
                raise ValueError(f"{field}: unknown sharding preset {name!r}; presets: {', '.join(sorted(PRESETS))}")
        # Several processes: each runs a generator replica on its share of the learner's devices (checked once P is known).
        one_per_process = self.distributed.mode != "off" and self.learner.size % self.generator.size == 0
        if self.placement == "colocated" and self.learner.size != self.generator.size and not one_per_process:
            raise ValueError(
                f"placement: colocated needs learner and generator meshes of one size, got {self.learner.size} and "
                f"{self.generator.size}; resize one, or use placement: disaggregated"
            )
        if self.device_memory_gib <= 0:
            raise ValueError(f"device_memory_gib must be > 0, got {self.device_memory_gib}")

    @property
    def num_devices(self) -> int:
        """Devices the run needs (in one process): one slice when colocated, both slices side by side otherwise."""
        return self.devices_per_process(1)

    def devices_per_process(self, processes: int) -> int:
        """Devices each of `processes` processes needs: its share of the learner's, plus its generator replica's when disaggregated."""
        if self.learner.size % processes:
            raise ValueError(f"parallel.learner ({self.learner.size} devices) does not split over {processes} processes; "
                             f"use a learner mesh whose size is a multiple of {processes}")
        share = self.learner.size // processes
        return share if self.placement == "colocated" else share + self.generator.size
