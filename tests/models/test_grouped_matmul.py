import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.models.grouped_matmul import (TILE, grouped_matmul, megablox_grouped_matmul, ragged_dot_grouped_matmul,
                                       resolve_moe_impl, scan_grouped_matmul)

IMPLS = {
    "ragged_dot": ragged_dot_grouped_matmul,
    "scan": scan_grouped_matmul,
    "megablox": functools.partial(megablox_grouped_matmul, interpret=True),
}
# Rows spanning three scan tiles; groups that share a tile, one that spans a tile edge, two empty
# groups (one at each end) and rows past the groups.
SIZES = np.array([0, 5, 120, 0, 3, 140, 1, 0], np.int32)
ROWS, K, N = 300, 16, 12


def dense_reference(lhs, rhs, group_sizes):
    """Every row times every group's matrix, kept where the row belongs to the group."""
    ends = jnp.cumsum(group_sizes)
    rows = jnp.arange(lhs.shape[0])[:, None]
    member = (rows >= (ends - group_sizes)[None]) & (rows < ends[None])  # [M, G]
    every = jnp.einsum("mk,gkn->mgn", lhs, rhs, precision="highest")
    return jnp.einsum("mgn,mg->mn", every, member.astype(lhs.dtype))


def _operands(dtype=jnp.float32):
    keys = jax.random.split(jax.random.key(0), 3)
    lhs = jax.random.normal(keys[0], (ROWS, K), dtype)
    rhs = jax.random.normal(keys[1], (len(SIZES), K, N), dtype)
    cotangent = jax.random.normal(keys[2], (ROWS, N), dtype)
    return lhs, rhs, jnp.asarray(SIZES), cotangent


@pytest.mark.parametrize("impl", IMPLS)
def test_values_and_gradients_match_the_dense_reference(impl):
    lhs, rhs, sizes, cotangent = _operands()
    assert ROWS > TILE * 2 and SIZES.sum() < ROWS
    out = IMPLS[impl](lhs, rhs, sizes)
    np.testing.assert_allclose(out, dense_reference(lhs, rhs, sizes), rtol=1e-5, atol=1e-5)
    assert not np.asarray(out[SIZES.sum():]).any()  # rows past the groups are exactly zero

    def loss(fn, lhs, rhs):
        return jnp.sum(fn(lhs, rhs, sizes) * cotangent)

    grads = jax.grad(functools.partial(loss, IMPLS[impl]), argnums=(0, 1))(lhs, rhs)
    expected = jax.grad(functools.partial(loss, dense_reference), argnums=(0, 1))(lhs, rhs)
    for got, want in zip(grads, expected):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    empty = np.flatnonzero(SIZES == 0)
    assert not np.asarray(grads[1][empty]).any()  # experts without tokens get no gradient
    assert not np.asarray(grads[0][SIZES.sum():]).any()


def test_scan_in_bfloat16_matches_float32_reference():
    lhs, rhs, sizes, _ = _operands(jnp.bfloat16)
    out = grouped_matmul(lhs, rhs, sizes, "scan")
    assert out.dtype == jnp.bfloat16
    want = dense_reference(lhs.astype(jnp.float32), rhs.astype(jnp.float32), sizes)
    np.testing.assert_allclose(out.astype(jnp.float32), want, rtol=2e-2, atol=5e-2)


def test_scan_and_tiny_inputs():
    lhs = jnp.ones((3, 2))
    rhs = jnp.stack([jnp.eye(2), 2 * jnp.eye(2)])
    out = grouped_matmul(lhs, rhs, jnp.array([1, 1]), "scan")
    np.testing.assert_array_equal(out, [[1, 1], [2, 2], [0, 0]])
    assert not grouped_matmul(lhs, rhs, jnp.array([0, 0]), "scan").any()


def _temp_bytes(fn, *shapes) -> int:
    return jax.jit(fn).lower(*shapes).compile().memory_analysis().temp_size_in_bytes


def test_scan_memory_is_bounded_by_a_tile_not_a_dense_mask():
    rows, groups, k, n = 4096, 64, 256, 128
    shapes = (jax.ShapeDtypeStruct((rows, k), jnp.float32), jax.ShapeDtypeStruct((groups, k, n), jnp.float32),
              jax.ShapeDtypeStruct((groups,), jnp.int32))
    dense_mask = rows * groups * k * 4

    def forward_backward(fn):
        return lambda lhs, rhs, sizes: jax.grad(lambda a, b: jnp.sum(fn(a, b, sizes) ** 2), argnums=(0, 1))(lhs, rhs)

    scan_bytes = _temp_bytes(forward_backward(scan_grouped_matmul), *shapes)
    ragged_bytes = _temp_bytes(forward_backward(ragged_dot_grouped_matmul), *shapes)
    operands = (rows * (k + n) + groups * k * n) * 4  # lhs, output, rhs: what any implementation touches
    assert ragged_bytes >= dense_mask  # what XLA's CPU lowering of ragged_dot keeps
    assert scan_bytes < operands < dense_mask / 10


def test_auto_picks_the_backends_implementation():
    assert resolve_moe_impl("auto", "tpu") == "megablox"
    assert resolve_moe_impl("auto", "gpu") == "ragged_dot"
    assert resolve_moe_impl("auto", "cpu") == "scan"
    assert resolve_moe_impl("ragged_dot", "cpu") == "ragged_dot"
    with pytest.raises(ValueError, match="moe impl 'megablox' needs a TPU backend, got 'cpu'"):
        resolve_moe_impl("megablox", "cpu")
    with pytest.raises(ValueError, match="unknown moe impl 'dense'; valid names: auto, ragged_dot, scan, megablox"):
        resolve_moe_impl("dense")
    with pytest.raises(ValueError, match="lhs and rhs must share one dtype"):
        grouped_matmul(jnp.ones((2, 2), jnp.bfloat16), jnp.ones((1, 2, 2)), jnp.array([2]), "scan")


def test_megablox_lowers_for_tpu_forward_and_backward():
    try:
        jax.jit(jnp.sin).trace(jnp.zeros(3)).lower(lowering_platforms=("tpu",))
    except Exception as error:  # noqa: BLE001 - any failure here means: no TPU lowering at all
        pytest.skip(f"this jaxlib cannot lower even jnp.sin for TPU: {error}")
    # Qwen3-30B-A3B's expert shapes (hidden 2048, expert width 768) in bfloat16, rows that fill no whole tile.
    shapes = (jax.ShapeDtypeStruct((1000, 2048), jnp.bfloat16), jax.ShapeDtypeStruct((32, 2048, 768), jnp.bfloat16),
              jax.ShapeDtypeStruct((32,), jnp.int32))

    def forward(lhs, rhs, sizes):
        return grouped_matmul(lhs, rhs, sizes, "megablox", backend="tpu")

    def gradient(lhs, rhs, sizes):
        return jax.grad(lambda a, b: jnp.sum(jnp.square(forward(a, b, sizes).astype(jnp.float32))), argnums=(0, 1))(lhs, rhs)

    lower = lambda fn: jax.jit(fn).trace(*shapes).lower(lowering_platforms=("tpu",)).as_text()
    assert lower(forward).count("tpu_custom_call") == 1
    assert lower(gradient).count("tpu_custom_call") == 3  # forward, then gmm for d lhs and tgmm for d rhs
