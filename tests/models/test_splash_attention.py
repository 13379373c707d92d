"""Splash attention (TPU Pallas, from jax): lowers for TPU from this CPU host, and in the Pallas interpreter
matches the dense reference for values and gradients with causal + left-padding masks and GQA, alone and
on each device's rows under a mesh."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rlx.models.activation_sharding import activation_sharding
from rlx.models.attention_kernels import reference_attention, resolve_attention_impl, splash_attention
from rlx.parallel import MeshConfig, make_mesh, rules_for
from rlx.parallel.layout import Layout

B, S, KV, G, D = 8, 150, 2, 2, 16  # 150 columns: padded to two 128-column blocks


def _inputs():
    keys = jax.random.split(jax.random.key(0), 3)
    q = jax.random.normal(keys[0], (B, S, KV, G, D))
    k, v = (jax.random.normal(key, (B, S, KV, D)) for key in keys[1:])
    start = jnp.array([0, 7, 149, 30, 0, 64, 128, 3], jnp.int32)  # row 2 holds one real token
    columns = jnp.broadcast_to(jnp.arange(S), (B, S))
    return q, k, v, columns, start


def _loss(attention, real):
    return lambda q, k, v, columns, start: jnp.sum(jnp.where(real, jnp.sin(attention(q, k, v, columns, start)), 0.0))


def _check_against_reference(attention):
    q, k, v, columns, start = _inputs()
    real = (columns >= start[:, None])[:, :, None, None, None]  # padding queries' outputs are never read
    got = jax.jit(attention)(q, k, v, columns, start)
    want = reference_attention(q, k, v, columns, start)
    np.testing.assert_allclose(np.where(real, got, 0), np.where(real, want, 0), atol=2e-5)
    grads = jax.jit(jax.grad(_loss(attention, real), argnums=(0, 1, 2)))(q, k, v, columns, start)
    expected = jax.grad(_loss(reference_attention, real), argnums=(0, 1, 2))(q, k, v, columns, start)
    for got_grad, want_grad in zip(grads, expected):
        np.testing.assert_allclose(got_grad, want_grad, atol=5e-5)


def test_interpreted_splash_matches_the_reference():
    _check_against_reference(lambda *args: splash_attention(*args, interpret=True))


def test_splash_runs_on_each_devices_rows_under_a_mesh():
    layout = Layout(make_mesh(MeshConfig(data=2, fsdp=4), jax.devices()[:8]), rules_for("fsdp"))
    hooks = layout.hooks()

    def sharded(*args):
        with activation_sharding(hooks):
            return splash_attention(*args, interpret=True)

    _check_against_reference(sharded)


def test_splash_lowers_for_tpu_forward_and_backward():
    q, k, v, columns, start = _inputs()
    q, k, v = (jax.ShapeDtypeStruct(x.shape, jnp.bfloat16) for x in (q, k, v))
    loss = lambda q, k, v: jnp.sum(splash_attention(q, k, v, columns, start).astype(jnp.float32))
    text = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).trace(q, k, v).lower(lowering_platforms=("tpu",)).as_text()
    assert text.count("tpu_custom_call") == 3  # forward (for the residuals), dq and dkv kernels


def test_auto_takes_splash_on_tpu_where_it_applies():
    assert resolve_attention_impl("auto", 128, "tpu") == "splash"
    assert resolve_attention_impl("auto", 128, "tpu", key_columns=128) == "splash"
    assert resolve_attention_impl("auto", 128, "tpu", key_columns=256) == "chunked"  # prefill after cached columns
    assert resolve_attention_impl("auto", 1, "tpu", key_columns=256) == "reference"  # decode
    with pytest.raises(ValueError, match="'splash' needs a TPU backend"):
        resolve_attention_impl("splash", 128, "cpu")
