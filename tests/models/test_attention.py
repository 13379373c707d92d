"""Attention implementations against the dense reference: values and gradients, left padding, GQA, caches."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import rlx.models.attention_kernels as kernels
from rlx.models import KVCache, ModelConfig, Qwen3
from rlx.models.attention_kernels import reference_attention, resolve_attention_impl

B, S, KV, G, D = 3, 37, 2, 3, 8


def _inputs(dtype=jnp.float32, keys=S):
    k0 = jax.random.split(jax.random.key(1), 3)
    q = jax.random.normal(k0[0], (B, S, KV, G, D)).astype(dtype)
    k = jax.random.normal(k0[1], (B, keys, KV, D)).astype(dtype)
    v = jax.random.normal(k0[2], (B, keys, KV, D)).astype(dtype)
    start = jnp.array([5, 0, 36])  # the last row holds a single real token
    columns = jnp.broadcast_to(jnp.arange(S)[None] + keys - S, (B, S))
    return q, k, v, columns, start


def _real(columns, start):
    return (columns >= start[:, None])[:, :, None, None, None]


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_values_and_gradients_match_the_reference(impl, monkeypatch):
    monkeypatch.setattr(kernels, "CHUNK", 8)  # several key blocks, the last one partial
    q, k, v, columns, start = _inputs()
    real = _real(columns, start)
    run = kernels._IMPLS[impl]
    np.testing.assert_allclose(np.where(real, run(q, k, v, columns, start), 0),
                               np.where(real, reference_attention(q, k, v, columns, start), 0), atol=2e-6)
    loss = lambda f: lambda *qkv: jnp.sum(jnp.where(real, jnp.sin(f(*qkv, columns, start)), 0))
    got = jax.grad(loss(run), argnums=(0, 1, 2))(q, k, v)
    want = jax.grad(loss(reference_attention), argnums=(0, 1, 2))(q, k, v)
    for a, b in zip(got, want):
        np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-5)


def test_chunked_reads_queries_against_a_longer_cache(monkeypatch):
    """Decode-shaped: queries at the end of a longer key range (a cache), kv columns past each query invisible."""
    monkeypatch.setattr(kernels, "CHUNK", 16)
    q, k, v, columns, start = _inputs(keys=50)
    real = _real(columns, start)
    np.testing.assert_allclose(np.where(real, kernels.chunked_attention(q, k, v, columns, start), 0),
                               np.where(real, reference_attention(q, k, v, columns, start), 0), atol=2e-6)


def test_chunked_bfloat16_stays_close_to_float32():
    q, k, v, columns, start = _inputs(jnp.bfloat16)
    real = _real(columns, start)
    out = kernels.chunked_attention(q, k, v, columns, start)
    assert out.dtype == jnp.bfloat16
    want = reference_attention(*(x.astype(jnp.float32) for x in (q, k, v)), columns, start)
    np.testing.assert_allclose(np.where(real, out.astype(jnp.float32), 0), np.where(real, want, 0), atol=3e-2)


def test_chunked_never_materialises_the_score_matrix(monkeypatch):
    """The compiled backward pass holds no [B, H, S, S] float32 buffer, only a few [B, H, S, block] ones."""
    monkeypatch.setattr(kernels, "CHUNK", 128)
    n = 2048
    q, k, v, columns, start = (jnp.zeros((1, n, 1, 1, 8)), jnp.zeros((1, n, 1, 8)), jnp.zeros((1, n, 1, 8)),
                               jnp.broadcast_to(jnp.arange(n)[None], (1, n)), jnp.zeros((1,), jnp.int32))
    temporaries = lambda f: jax.jit(jax.grad(lambda q, k, v: jnp.sum(f(q, k, v, columns, start)), argnums=(0, 1, 2))).lower(
        q, k, v).compile().memory_analysis().temp_size_in_bytes
    dense = n * n * 4
    assert temporaries(reference_attention) >= dense
    assert temporaries(kernels.chunked_attention) < dense / 2


def test_auto_choice_and_refusals():
    assert resolve_attention_impl("auto", 128, "cpu") == "chunked"
    assert resolve_attention_impl("auto", 128, "gpu") == "cudnn"
    assert resolve_attention_impl("auto", 1, "gpu") == "reference"  # one query per row: decode
    assert resolve_attention_impl("auto", 2, "cpu") == "reference"  # a token and its draft: speculative decode
    assert resolve_attention_impl("auto", 3, "cpu") == "chunked"
    with pytest.raises(ValueError, match="'cudnn' needs a GPU backend"):
        resolve_attention_impl("cudnn", 128, "cpu")
    with pytest.raises(ValueError, match="unknown attention impl 'flash'"):
        resolve_attention_impl("flash", 128)


CONFIG = ModelConfig(vocab_size=23, hidden_size=32, intermediate_size=48, num_layers=3, num_heads=4, num_kv_heads=2, head_dim=8,
                     max_seq_len=32)


@pytest.mark.parametrize("impl", ["chunked", "xla"])
def test_model_logits_and_gradients_match_across_impls(impl):
    ids = jax.random.randint(jax.random.key(0), (2, 9), 3, 23)
    start = jnp.array([2, 0])
    grads, logits = [], []
    for name in ("reference", impl):
        model = Qwen3(dataclasses.replace(CONFIG, attention_impl=name), rngs=nnx.Rngs(0))
        graphdef, state = nnx.split(model)
        loss = lambda p: jnp.sum(jnp.sin(nnx.merge(graphdef, p)(ids, start=start)[0][:, 2:]))
        grads.append(jax.grad(loss)(state))
        logits.append(model(ids, start=start)[0][:, 2:])
    np.testing.assert_allclose(logits[0], logits[1], atol=1e-5)
    for a, b in zip(jax.tree.leaves(grads[0]), jax.tree.leaves(grads[1])):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(jnp.abs(a).max())))


def test_decode_with_kv_len_reads_only_the_first_columns():
    """Columns past `kv_len` are never read: garbage there changes nothing."""
    model = Qwen3(CONFIG, rngs=nnx.Rngs(0))
    ids = jax.random.randint(jax.random.key(0), (2, 6), 3, 23)
    start = jnp.array([1, 0])
    full, _ = model(ids, start=start)
    cache = KVCache.zeros(CONFIG, 2, 16)
    _, cache = model(ids[:, :5], start=start, cache=cache, cache_index=0)
    cache = KVCache(cache.k.at[:, :, 8:].set(1e4), cache.v.at[:, :, 8:].set(jnp.nan))
    step, cache = model(ids[:, 5:6], start=start, cache=cache, cache_index=jnp.array([5, 5]), kv_len=8)
    np.testing.assert_allclose(step[:, 0], full[:, 5], atol=1e-5)


@pytest.mark.parametrize("remat", ["full", "save_dots"])
def test_remat_changes_no_gradient(remat):
    model = Qwen3(CONFIG, rngs=nnx.Rngs(0))
    graphdef, state = nnx.split(model)
    ids = jax.random.randint(jax.random.key(0), (2, 9), 3, 23)
    loss = lambda p, r: jnp.sum(jnp.sin(nnx.merge(graphdef, p).hidden_states(ids, remat=r)[0]))
    for a, b in zip(jax.tree.leaves(jax.grad(loss)(state, "none")), jax.tree.leaves(jax.grad(loss)(state, remat))):
        np.testing.assert_allclose(a, b, atol=1e-5 * max(1.0, float(jnp.abs(a).max())))
    with pytest.raises(ValueError, match="remat 'some' is not one of"):
        model.hidden_states(ids, remat="some")


def test_layers_are_scanned_so_compile_size_is_flat_in_depth():
    """The lowered program of a 2-layer and an 8-layer model are about the same size (one scanned body)."""
    text = lambda layers: jax.jit(lambda p, x: nnx.merge(graphdef(layers), p)(x)[0]).lower(
        state(layers), jnp.zeros((1, 4), jnp.int32)).as_text()
    graphdef = lambda n: nnx.graphdef(nnx.eval_shape(lambda: Qwen3(dataclasses.replace(CONFIG, num_layers=n), rngs=nnx.Rngs(0))))
    state = lambda n: nnx.state(nnx.eval_shape(lambda: Qwen3(dataclasses.replace(CONFIG, num_layers=n), rngs=nnx.Rngs(0))))
    assert len(text(8)) < 1.1 * len(text(2))
