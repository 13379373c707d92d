"""The MTP drafting heads: config, weights (same trunk with and without them, named axes, shardings),
causal drafting, and a Hugging Face export that holds the trunk only."""

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from safetensors import safe_open

from rlx.models import KVCache, ModelConfig, Qwen3, load_params, save_pretrained
from rlx.models.mtp_config import MTPConfig
from rlx.parallel import MeshConfig, make_mesh, rules_for, tree_shardings
from rlx.parallel.rules import logical_names

BASE = ModelConfig(vocab_size=48, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=2, head_dim=16,
                   max_seq_len=32, tie_word_embeddings=False)
WITH_MTP = dataclasses.replace(BASE, mtp=MTPConfig(enabled=True, confidence_width=16))


def _flat(state):
    return {jax.tree_util.keystr(path): leaf for path, leaf in jax.tree_util.tree_leaves_with_path(state)}


@pytest.mark.parametrize("field, value", [("loss_coef", -0.1), ("confidence_coef", float("nan")), ("confidence_width", 0),
                                          ("confidence_loss", "l1")])
def test_config_refuses_bad_values(field, value):
    with pytest.raises(ValueError, match=field):
        MTPConfig(**{field: value})


@pytest.fixture(scope="module")
def models():
    """(with heads, without), both from seed 0."""
    return Qwen3(WITH_MTP, rngs=nnx.Rngs(0)), Qwen3(BASE, rngs=nnx.Rngs(0))


def test_trunk_weights_are_the_same_with_and_without_heads(models):
    with_heads, plain = (_flat(nnx.state(model, nnx.Param)) for model in models)
    heads = {key for key in with_heads if key.startswith("['mtp']")}
    assert heads and set(with_heads) - heads == set(plain)
    for key, value in plain.items():
        np.testing.assert_array_equal(with_heads[key], value)


def test_every_head_parameter_has_logical_names_and_shards():
    _, abstract = nnx.split(nnx.eval_shape(lambda: Qwen3(WITH_MTP, rngs=nnx.Rngs(0))))
    heads = jax.tree.leaves(abstract["mtp"], is_leaf=lambda x: isinstance(x, nnx.Variable))
    assert len(heads) >= 10
    for variable in heads:
        assert logical_names(variable) is not None and len(logical_names(variable)) == len(variable.shape)
    mesh = make_mesh(MeshConfig(fsdp=2, tensor=2, data=2), jax.devices()[:8])
    learner = tree_shardings(abstract, mesh, rules_for("fsdp_tp"))["mtp"]
    generator = tree_shardings(abstract, mesh, rules_for("serve_tp"))["mtp"]
    assert tuple(learner["proj"].spec) == (None, "fsdp")  # `embed` split by the learner, whole for the generator
    assert all(axis is None for axis in generator["proj"].spec)
    assert tuple(learner["layer"]["attn"]["q_proj"].spec) == ("fsdp", "tensor", None)


def test_drafts_are_causal_and_confidence_starts_at_one_half(models):
    model = models[0]
    tokens = jax.random.randint(jax.random.key(1), (2, 9), 0, BASE.vocab_size)
    start = jnp.array([0, 2])
    hidden, _ = model.hidden_states(tokens[:, :-1], start=start)
    drafted, _ = model.mtp_hidden_states(hidden, tokens[:, 1:], start=start)
    assert drafted.shape == hidden.shape
    changed = tokens.at[:, -1].set((tokens[:, -1] + 1) % BASE.vocab_size)
    drafted_changed, _ = model.mtp_hidden_states(hidden, changed[:, 1:], start=start)
    np.testing.assert_allclose(drafted_changed[:, :-1], drafted[:, :-1], atol=1e-6)  # a column sees nothing after it
    assert not np.allclose(drafted_changed[:, -1], drafted[:, -1])
    np.testing.assert_allclose(model.mtp.confidence(hidden, drafted), 0.5)
    assert model.logits(drafted).shape == (2, 8, BASE.vocab_size)


def test_last_column_drafting_matches_every_column_and_writes_the_same_cache(models):
    """`mtp_last_hidden` (a decode step's draft) is `mtp_hidden_states` at the last column, and it and `mtp_cache` leave
    the MTP layer's cache as `mtp_hidden_states` does, at per-row columns, though they skip (some of) the layer's output."""
    model = models[0]
    tokens = jax.random.randint(jax.random.key(2), (2, 6), 0, BASE.vocab_size)
    start, index = jnp.array([0, 1]), jnp.array([3, 4])
    hidden = jax.random.normal(jax.random.key(3), (2, 2, BASE.hidden_size))
    filled = jax.random.normal(jax.random.key(4), KVCache.shape(dataclasses.replace(BASE, num_layers=2), 2, 8))
    cache = KVCache(filled, -filled)  # earlier columns hold keys and values the new columns attend to
    every, every_cache = model.mtp_hidden_states(hidden, tokens[:, 4:], start=start, cache=cache, cache_index=index)
    last, last_cache = model.mtp_last_hidden(hidden, tokens[:, 4:], start=start, cache=cache, cache_index=index)
    np.testing.assert_allclose(last, every[:, -1], atol=1e-5)
    np.testing.assert_allclose(last_cache.k, every_cache.k, atol=1e-6)
    np.testing.assert_allclose(last_cache.v, every_cache.v, atol=1e-6)
    only_cache = model.mtp_cache(hidden, tokens[:, 4:], start=start, cache=cache, cache_index=index)  # prefill's: no outputs
    np.testing.assert_allclose(only_cache.k, every_cache.k, atol=1e-6)
    np.testing.assert_allclose(only_cache.v, every_cache.v, atol=1e-6)
    assert not np.allclose(every_cache.k[1], cache.k[1])  # they all wrote the MTP layer's columns


def test_without_heads_drafting_is_refused():
    model = Qwen3(BASE, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="model.mtp"):
        model.mtp_hidden_states(jnp.zeros((1, 2, 32)), jnp.zeros((1, 2), jnp.int32))


def test_hf_export_writes_the_trunk_only_and_loads_back_with_fresh_heads(models, tmp_path, caplog):
    one_device = lambda abstract: jax.tree.map(lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract,
                                               is_leaf=lambda x: isinstance(x, nnx.Variable))
    with_heads, plain = models
    with caplog.at_level(logging.INFO, logger="rlx.models.hf"):
        save_pretrained(with_heads, tmp_path / "mtp")
    assert "trunk only" in caplog.text
    save_pretrained(plain, tmp_path / "plain")
    keys = lambda path: set(safe_open(str(path / "model.safetensors"), "np").keys())
    assert keys(tmp_path / "mtp") == keys(tmp_path / "plain")
    _, loaded = load_params(tmp_path / "mtp", WITH_MTP, one_device, seed=5)
    original = _flat(nnx.state(with_heads, nnx.Param))
    assert set(_flat(loaded)) == set(original)
    for key, value in _flat(loaded).items():
        if not key.startswith("['mtp']"):
            np.testing.assert_array_equal(value, original[key])
