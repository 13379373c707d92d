"""Modality-aware parallelism: encoders run data-parallel over every device of a slice.

The LLM follows its rules table (e.g. heads split over `tensor`, rows over `data`/`fsdp`),
so on a tensor-parallel mesh several devices share each LLM row. Encoders are small and
their weights are replicated (their logical axis names, `enc_*`, map to no mesh axis), so
they instead split their items over all mesh axes at once: every device, including those
holding tensor-parallel LLM shards, encodes its own share. The features are then
resharded to the LLM's activation layout (`batch` rows per the rules) before the merge.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from rlx.parallel.presets import Rules
from rlx.parallel.rules import batch_sharding


def encoder_sharding(mesh: Mesh) -> NamedSharding:
    """Items (leading dim) split over all mesh axes together."""
    return NamedSharding(mesh, PartitionSpec(tuple(mesh.axis_names)))


def encode_data_parallel(encode: Callable[[jax.Array], jax.Array], inputs: jax.Array, mesh: Mesh, rules: Rules) -> jax.Array:
    """`encode(inputs)` with items spread over every device of `mesh`, returned in the LLM's row layout.

    Call inside `jax.jit`. Items are zero-padded to a multiple of the device count (padding
    rows are encoded and dropped), so any batch size works.
    """
    rows, devices = inputs.shape[0], mesh.devices.size
    padded = -(-rows // devices) * devices
    inputs = jnp.pad(inputs, [(0, padded - rows)] + [(0, 0)] * (inputs.ndim - 1))
    features = encode(jax.lax.with_sharding_constraint(inputs, encoder_sharding(mesh)))
    features = jax.lax.with_sharding_constraint(features, encoder_sharding(mesh))[:rows]
    return jax.lax.with_sharding_constraint(features, batch_sharding(mesh, rules, features.shape, "encoder features"))
