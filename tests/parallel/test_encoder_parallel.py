"""Encoders data-parallel over all 8 simulated devices (a tensor-parallel LLM mesh) == unsharded."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModalityEmbeddings, ModelConfig, Qwen3
from rlx.models.encoder_config import AudioConfig, VisionConfig
from rlx.models.encoders import AudioEncoder, VisionEncoder
from rlx.parallel import MeshConfig, make_mesh, rules_for, tree_shardings
from rlx.parallel.modality import encode_data_parallel, encoder_sharding

LLM_WIDTH = 32


@pytest.fixture(scope="module")
def mesh():
    return make_mesh(MeshConfig(fsdp=2, tensor=4), jax.devices()[:8])


def _sharded_and_plain(encoder, method, inputs, mesh):
    graphdef, params = nnx.split(encoder)
    rules = rules_for("fsdp_tp")

    @jax.jit
    def sharded(params, x):
        module = nnx.merge(graphdef, params)
        return encode_data_parallel(getattr(module, method), x, mesh, rules)

    plain = jax.jit(lambda params, x: getattr(nnx.merge(graphdef, params), method)(x))
    return sharded(params, inputs), plain(params, inputs)


@pytest.mark.parametrize("rows", [8, 6])
def test_vision_encoder_sharded_matches_unsharded(mesh, rows):
    encoder = VisionEncoder(VisionConfig(enabled=True, width=16, heads=2, mlp=32), LLM_WIDTH, rngs=nnx.Rngs(0))
    images = jax.random.uniform(jax.random.key(1), (rows, 16, 16, 3), minval=-1, maxval=1)
    sharded, plain = _sharded_and_plain(encoder, "encode_images", images, mesh)
    np.testing.assert_allclose(sharded, plain, atol=1e-5)
    # Rows end in the LLM's layout: split over data x fsdp (here fsdp=2) when they divide, never over tensor.
    assert "tensor" not in str(sharded.sharding.spec)


def test_video_and_audio_sharded_match_unsharded(mesh):
    vision = VisionEncoder(VisionConfig(enabled=True, width=16, heads=2, mlp=32), LLM_WIDTH, rngs=nnx.Rngs(0))
    frames = jax.random.uniform(jax.random.key(2), (8, 4, 16, 16, 3), minval=-1, maxval=1)
    np.testing.assert_allclose(*_sharded_and_plain(vision, "encode_video", frames, mesh), atol=1e-5)
    audio = AudioEncoder(AudioConfig(enabled=True, width=16, heads=2, mlp=32), LLM_WIDTH, rngs=nnx.Rngs(0))
    mels = jax.random.normal(jax.random.key(3), (16, 32, 16))
    np.testing.assert_allclose(*_sharded_and_plain(audio, "__call__", mels, mesh), atol=1e-5)


def test_encoder_items_use_every_device(mesh):
    sharding = encoder_sharding(mesh)
    placed = jax.device_put(jnp.zeros((16, 4)), sharding)
    assert {shard.data.shape[0] for shard in placed.addressable_shards} == {2}
    assert len({shard.device for shard in placed.addressable_shards}) == 8


def test_sharded_llm_with_data_parallel_encoder_matches_unsharded_forward(mesh):
    """LLM weights split by the fsdp_tp rules (heads and MLP over `tensor`), the image encoder
    data-parallel over all 8 devices, its features merged in the LLM's layout: same logits."""
    config = ModelConfig(vocab_size=16, hidden_size=LLM_WIDTH, intermediate_size=64, num_layers=1, num_heads=4, num_kv_heads=4,
                         head_dim=8, vision=VisionConfig(enabled=True, width=16, heads=2, mlp=32))
    graphdef, params = nnx.split(Qwen3(config, rngs=nnx.Rngs(0)))
    rules = rules_for("fsdp_tp")
    ids = jnp.tile(jnp.array([[1, 3, 3, 3, 3, 7, 8, 9]]), (8, 1))
    images = jax.random.uniform(jax.random.key(4), (8, 16, 16, 3), minval=-1, maxval=1)

    @jax.jit
    def sharded(params, ids, images):
        model = nnx.merge(graphdef, params)
        features = encode_data_parallel(model.vision.encode_images, images, mesh, rules)
        return model(ids, modality=ModalityEmbeddings(ids == 3, features))[0]

    placed = jax.device_put(params, tree_shardings(params, mesh, rules))
    assert any("tensor" in str(leaf.sharding.spec) for leaf in jax.tree.leaves(placed))
    plain = jax.jit(lambda params, ids, images: nnx.merge(graphdef, params)(ids, media={"image": images})[0])
    np.testing.assert_allclose(sharded(placed, ids, images), plain(params, ids, images), atol=1e-5)
