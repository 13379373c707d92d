"""Meshes, device slices, sharding rules per role, resharding and multi-host start-up. No model code."""

from rlx.parallel.config import DistributedConfig, MeshConfig, ParallelConfig
from rlx.parallel.distributed import initialize_distributed
from rlx.parallel.layout import Layout
from rlx.parallel.mesh import expand_shardings, from_host, make_mesh, reshard, role_meshes
from rlx.parallel.presets import PRESETS
from rlx.parallel.rules import ShardingError, batch_sharding, partition_spec, rules_for, spec_table, tree_shardings

__all__ = [
    "PRESETS", "DistributedConfig", "Layout", "MeshConfig", "ParallelConfig", "ShardingError", "batch_sharding", "expand_shardings", "from_host",
    "initialize_distributed", "make_mesh", "partition_spec", "reshard", "role_meshes", "rules_for", "spec_table",
    "tree_shardings",
]
