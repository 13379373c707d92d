import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import KVCache, ModalityEmbeddings, ModelConfig, Qwen3, merge_modality_embeddings
from rlx.models.layers import rope


def make_model(**overrides) -> Qwen3:
    fields = dict(vocab_size=23, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_seq_len=32)
    fields.update(overrides)
    return Qwen3(ModelConfig(**fields), rngs=nnx.Rngs(0))


def random_ids(shape, vocab=23, seed=0):
    return jax.random.randint(jax.random.key(seed), shape, 3, vocab)


@pytest.mark.parametrize("tied", [True, False])
def test_logits_shape_and_dtype(tied):
    model = make_model(tie_word_embeddings=tied)
    logits, cache = model(random_ids((3, 7)))
    assert logits.shape == (3, 7, 23) and logits.dtype == jnp.float32 and cache is None
    assert hasattr(model, "lm_head") != tied


def test_causal_future_tokens_do_not_change_the_past():
    model = make_model()
    ids = random_ids((2, 10))
    changed = ids.at[:, 6:].set(random_ids((2, 4), seed=1))
    a, _ = model(ids)
    b, _ = model(changed)
    np.testing.assert_allclose(a[:, :6], b[:, :6], atol=1e-6)
    assert not np.allclose(a[:, 6:], b[:, 6:])


def test_left_padding_does_not_change_real_tokens():
    model = make_model()
    ids = random_ids((1, 6))
    padded = jnp.concatenate([jnp.zeros((1, 3), jnp.int32), ids], axis=1)
    plain, _ = model(ids)
    shifted, _ = model(padded, start=jnp.array([3]))
    np.testing.assert_allclose(plain, shifted[:, 3:], atol=1e-5)


def test_cached_decode_matches_full_forward():
    model = make_model()
    ids = random_ids((2, 9))
    start = jnp.array([2, 0])
    full, _ = model(ids, start=start)
    cache = KVCache.zeros(model.config, 2, 12)
    prefill, cache = model(ids[:, :5], start=start, cache=cache, cache_index=0)
    np.testing.assert_allclose(prefill[1], full[1, :5], atol=1e-5)
    np.testing.assert_allclose(prefill[0, 2:], full[0, 2:5], atol=1e-5)
    for column in range(5, 9):
        step, cache = model(ids[:, column : column + 1], start=start, cache=cache, cache_index=column)
        np.testing.assert_allclose(step[:, 0], full[:, column], atol=1e-5)


def test_gqa_equals_explicit_repeated_kv_heads():
    """With kv heads duplicated per group, GQA must equal plain multi-head attention."""
    gqa = make_model(num_heads=4, num_kv_heads=2)
    mha = make_model(num_heads=4, num_kv_heads=4)
    _, gqa_state = nnx.split(gqa)
    graphdef, mha_state = nnx.split(mha)
    gqa_params = nnx.to_pure_dict(gqa_state)
    attn = gqa_params["layers"][0]["layer"]["attn"]  # both layers, stacked on axis 0
    attn["k_proj"] = jnp.repeat(attn["k_proj"], 2, axis=2)
    attn["v_proj"] = jnp.repeat(attn["v_proj"], 2, axis=2)
    nnx.replace_by_pure_dict(mha_state, gqa_params)
    ids = random_ids((2, 6))
    np.testing.assert_allclose(gqa(ids)[0], nnx.merge(graphdef, mha_state)(ids)[0], atol=1e-5)


def test_every_parameter_has_logical_axis_names():
    model = make_model(tie_word_embeddings=False)
    for path, variable in nnx.iter_graph(model):
        if isinstance(variable, nnx.Param):
            names = variable.get_metadata().get("out_sharding")
            assert names is not None and len(names) == variable[...].ndim, path
            assert all(isinstance(n, str) for n in names), path


def test_rope_theta_is_used():
    x = jax.random.normal(jax.random.key(0), (1, 4, 1, 8))
    positions = jnp.arange(4)[None]
    assert not np.allclose(rope(x, positions, 10_000.0), rope(x, positions, 100.0))
    base = make_model(rope_theta=10_000.0)
    graphdef, state = nnx.split(base)
    other = nnx.merge(nnx.split(make_model(rope_theta=500.0))[0], state)
    ids = random_ids((1, 6))
    assert not np.allclose(base(ids)[0], other(ids)[0])


def test_rope_preserves_norm_and_is_relative():
    x = jax.random.normal(jax.random.key(0), (1, 1, 1, 8))
    y = jax.random.normal(jax.random.key(1), (1, 1, 1, 8))
    at = lambda v, p: rope(v, jnp.array([[p]]), 10_000.0)
    np.testing.assert_allclose(jnp.linalg.norm(at(x, 5)), jnp.linalg.norm(x), rtol=1e-5)
    dot = lambda p, q: float(jnp.sum(at(x, p) * at(y, q)))
    assert dot(3, 1) == pytest.approx(dot(7, 5), rel=1e-4)


def test_merge_point_scatters_features_in_order():
    embeds = jnp.zeros((2, 5, 3))
    mask = jnp.array([[0, 1, 1, 0, 0], [0, 0, 0, 0, 1]], bool)
    features = jnp.arange(2 * 2 * 3, dtype=jnp.float32).reshape(2, 2, 3) + 1
    merged = merge_modality_embeddings(embeds, ModalityEmbeddings(mask, features))
    np.testing.assert_array_equal(merged[0, 1], features[0, 0])
    np.testing.assert_array_equal(merged[0, 2], features[0, 1])
    np.testing.assert_array_equal(merged[1, 4], features[1, 0])
    np.testing.assert_array_equal(merged[0, 0], 0)
    assert merge_modality_embeddings(embeds, None) is embeds


def test_merge_point_feeds_the_model():
    model = make_model()
    ids = jax.random.randint(jax.random.key(0), (1, 5), 6, 23).at[0, 2].set(3)
    features = jnp.ones((1, 1, 32))
    modality = ModalityEmbeddings(ids == 3, features)
    plain, _ = model(ids)
    merged, _ = model(ids, modality=modality)
    np.testing.assert_allclose(plain[:, :2], merged[:, :2], atol=1e-6)
    assert not np.allclose(plain[:, 2:], merged[:, 2:])


@pytest.mark.parametrize(
    "fields, message",
    [
        (dict(num_heads=4, num_kv_heads=3), "multiple of num_kv_heads"),
        (dict(head_dim=7), "head_dim must be even"),
        (dict(vocab_size=0), "vocab_size must be >= 1"),
    ],
)
def test_bad_model_config(fields, message):
    with pytest.raises(ValueError, match=message):
        ModelConfig(**fields)


def test_vocab_resolution():
    assert ModelConfig().with_vocab(18).vocab_size == 18
    assert ModelConfig(vocab_size=32).with_vocab(18).vocab_size == 32
    with pytest.raises(ValueError, match="smaller than the tokenizer"):
        ModelConfig(vocab_size=10).with_vocab(18)
    with pytest.raises(ValueError, match="unresolved"):
        Qwen3(ModelConfig(), rngs=nnx.Rngs(0))
