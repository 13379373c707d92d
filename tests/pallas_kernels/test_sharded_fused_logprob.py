"""The fused op under shard_map on 8 simulated devices: rows split over data-parallel axes, the vocabulary
over `tensor` (cross-device log-sum-exp), against the unsharded reference for values and gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from pallas_kernels import sharded_token_logprobs_and_entropy
from pallas_kernels.fused_logprob import reference_token_logprobs_and_entropy
from pallas_kernels.fused_logprob import sharded as sharded_module
from tests.pallas_kernels.test_fused_logprob import BLOCKS, _inputs, _value_and_grads

N, D, V, TEMPERATURE = 48, 24, 260, 0.7  # 260 columns: 130 per tensor shard, a partial block on each


@pytest.fixture(scope="module")
def mesh():
    return Mesh(np.asarray(jax.devices()[:8]).reshape(2, 2, 2), ("data", "fsdp", "tensor"))


@pytest.mark.parametrize("impl", ["pallas_interpret", "chunked", "reference"])
@pytest.mark.parametrize("row_axes, vocab_axes", [(("data", "fsdp", "tensor"), ()), (("data", "fsdp"), ("tensor",))],
                         ids=["rows-8-ways", "rows-4-ways-vocab-2-ways"])
def test_sharded_matches_the_unsharded_reference(mesh, impl, row_axes, vocab_axes):
    h, w, targets, cotangents = _inputs(N, D, V)
    blocks = BLOCKS.get(impl, {})

    def sharded(h, w, y, t):
        return sharded_token_logprobs_and_entropy(h, w, y, t, mesh=mesh, row_axes=row_axes, vocab_axes=vocab_axes, impl=impl, **blocks)

    placed = jax.device_put((h, w, targets), (NamedSharding(mesh, P(row_axes)), NamedSharding(mesh, P(None, vocab_axes or None)),
                                               NamedSharding(mesh, P(row_axes))))
    (logp, entropy), (dh, dw) = _value_and_grads(sharded, *placed, TEMPERATURE, cotangents)
    (want_logp, want_entropy), (want_dh, want_dw) = _value_and_grads(reference_token_logprobs_and_entropy, h, w, targets, TEMPERATURE,
                                                                     cotangents)
    np.testing.assert_allclose(logp, want_logp, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(entropy, want_entropy, atol=2e-5, rtol=1e-5)
    np.testing.assert_allclose(dh, want_dh, atol=2e-5, rtol=1e-4)
    np.testing.assert_allclose(dw, want_dw, atol=2e-5, rtol=1e-4)
    assert logp.sharding.spec == P(row_axes)  # rows stay where they were


def test_each_device_runs_the_kernel_on_its_rows_only(mesh, monkeypatch):
    """Under shard_map the Pallas call sees a device's block of rows (and of vocabulary), never the whole."""
    h, w, targets, _ = _inputs(N, D, V)
    seen = []

    def record(h, w, y, t, **options):
        seen.append((h.shape, w.shape))
        return reference_token_logprobs_and_entropy(h, w, y, t)

    monkeypatch.setattr(sharded_module, "token_logprobs_and_entropy", record)
    jax.jit(lambda h, w, y: sharded_token_logprobs_and_entropy(h, w, y, 1.0, mesh=mesh, row_axes=("data", "fsdp"),
                                                               vocab_axes=("tensor",))).lower(h, w, targets)
    assert seen == [((N // 4, D), (D, V // 2))]


def test_without_a_mesh_it_is_the_plain_op():
    h, w, targets, _ = _inputs(N, D, V)
    got = sharded_token_logprobs_and_entropy(h, w, targets, 1.0, impl="reference")
    want = reference_token_logprobs_and_entropy(h, w, targets, 1.0)
    np.testing.assert_array_equal(jnp.stack(got), jnp.stack(want))
