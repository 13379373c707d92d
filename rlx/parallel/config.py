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
    (what `launch/*.sh` set per host, so every host can share one config file)."""

    mode: Literal["off", "auto", "explicit"] = "off"
    coordinator_address: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    timeout_s: int = 300

    def __post_init__(self) -> None:
        if self.num_processes is not None and self.num_processes < 1:
            raise ValueError(f"num_processes must be >= 1, got {self.num_processes}")
        if self.process_id is not None and self.process_id < 0:
            raise ValueError(f"process_id must be >= 0, got {self.process_id}")
        if self.timeout_s < 1:
            raise ValueError(f"timeout_s must be >= 1, got {self.timeout_s}")


@dataclasses.dataclass(frozen=True)
class ParallelConfig:
    """Where the learner and the generator run, and how their weights are sharded.

    `colocated`: both use the same devices (time-shared), so their meshes must have the same
    size. `disaggregated`: the learner takes the first `learner.size` devices and the
    generator the next `generator.size`. Rule presets are named in `rlx.parallel.presets.PRESETS`.
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
        if self.placement == "colocated" and self.learner.size != self.generator.size:
            raise ValueError(
                f"placement: colocated needs learner and generator meshes of one size, got {self.learner.size} and "
                f"{self.generator.size}; resize one, or use placement: disaggregated"
            )
        if self.device_memory_gib <= 0:
            raise ValueError(f"device_memory_gib must be > 0, got {self.device_memory_gib}")

    @property
    def num_devices(self) -> int:
        """Devices the run needs: one slice when colocated, both slices side by side otherwise."""
        if self.placement == "colocated":
            return self.learner.size
        return self.learner.size + self.generator.size
