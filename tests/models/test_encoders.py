"""Modality encoders: output shapes, frozen weights, and the merge of encoder tokens into the prompt."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.models import ModalityEmbeddings, ModelConfig, Qwen3
from rlx.models.encoder_config import AudioConfig, VisionConfig
from rlx.models.encoders import VisionEncoder

VISION = VisionConfig(enabled=True, image_size=16, patch_size=4, spatial_merge=2, video_frames=3, width=16, heads=2, mlp=32)
AUDIO = AudioConfig(enabled=True, n_mels=8, mel_frames=12, width=16, heads=2, mlp=32)
CONFIG = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                     vision=VISION, audio=AUDIO)


def built(make):
    """A module initialized in one compiled program (op-by-op eager init compiles every op)."""
    graphdef = nnx.graphdef(nnx.eval_shape(make))
    return nnx.merge(graphdef, jax.jit(lambda: nnx.state(make()))())


def jitted(fn):
    """`fn(module, *args)` compiled once, the module's weights passed as an argument."""
    compiled = jax.jit(lambda graphdef, state, *args: fn(nnx.merge(graphdef, state), *args), static_argnums=0)
    return lambda module, *args: compiled(nnx.graphdef(module), nnx.state(module), *args)


@pytest.fixture(scope="module")
def model():
    return built(lambda: Qwen3(CONFIG, rngs=nnx.Rngs(0)))


encode_images = jitted(lambda m, x: m.vision.encode_images(x))
encode_video = jitted(lambda m, x: m.vision.encode_video(x))
encode_audio = jitted(lambda m, x: m.audio(x))
forward = jitted(lambda m, ids, media, modality: m(ids, media=media, modality=modality)[0])


def test_encoder_token_counts_and_shapes(model):
    assert (VISION.image_tokens, VISION.video_tokens, AUDIO.audio_tokens) == (4, 12, 3)
    assert encode_images(model, jnp.zeros((2, 16, 16, 3))).shape == (2, 4, 32)
    assert encode_video(model, jnp.zeros((2, 3, 16, 16, 3))).shape == (2, 12, 32)
    assert encode_audio(model, jnp.zeros((2, 12, 8))).shape == (2, 3, 32)


def test_video_frames_are_told_apart_by_temporal_position(model):
    frames = jax.random.uniform(jax.random.key(0), (1, 3, 16, 16, 3))
    forward_ = encode_video(model, frames)
    backward = encode_video(model, frames[:, ::-1])
    # Same frames in reverse order: without temporal embeddings the token sets would coincide.
    assert not np.allclose(np.sort(forward_.ravel()), np.sort(backward.ravel()), atol=1e-4)


def test_text_only_model_has_no_encoder_weights():
    config = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16)
    text = nnx.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0)))
    paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.state(text, nnx.Param))[0]]
    assert not any("vision" in p or "audio" in p for p in paths)


def test_media_are_scattered_into_their_placeholders(model):
    ids = jnp.array([[1, 3, 3, 3, 3, 7, 4, 4, 4, 8]])
    image, mels = jax.random.normal(jax.random.key(1), (1, 16, 16, 3)), jax.random.normal(jax.random.key(2), (1, 12, 8))
    logits = forward(model, ids, {"image": image, "audio": mels}, None)
    # Merging the pre-computed features at the same columns gives the same logits ...
    features = jnp.zeros((1, 7, 32)).at[:, :4].set(encode_images(model, image)).at[:, 4:].set(encode_audio(model, mels))
    mask = (ids == 3) | (ids == 4)
    expected = forward(model, ids, None, ModalityEmbeddings(mask, features))
    np.testing.assert_allclose(logits, expected, atol=1e-5)
    # ... and other media change the outputs, plain placeholder embeddings are not what the model sees.
    other = forward(model, ids, {"image": -image, "audio": mels}, None)
    assert not np.allclose(logits, other, atol=1e-4)


def test_placeholder_ids_past_the_prompt_stay_text(model):
    """A response that samples a placeholder id gets the token's embedding, as it did in the sampler."""
    prompt, response = jnp.array([[1, 3, 3, 3, 3, 7]]), jnp.array([[3, 9]])
    ids = jnp.concatenate([prompt, response], axis=1)
    image = jax.random.normal(jax.random.key(1), (1, 16, 16, 3))
    run = jitted(lambda m, ids, media: m(ids, media=media, media_columns=prompt.shape[1])[0])
    features = jnp.zeros((1, 4, 32)).at[:, :4].set(encode_images(model, image))
    expected = forward(model, ids, None, ModalityEmbeddings((ids == 3) & (jnp.arange(8) < 6), features))
    np.testing.assert_allclose(run(model, ids, {"image": image}), expected, atol=1e-5)


def test_media_without_an_encoder_is_an_error():
    config = ModelConfig(vocab_size=16, hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, num_kv_heads=1, head_dim=16,
                         vision=VISION)
    with pytest.raises(ValueError, match="model.audio"):
        jax.eval_shape(lambda: Qwen3(config, rngs=nnx.Rngs(0))(jnp.ones((1, 4), jnp.int32), media={"audio": jnp.zeros((1, 12, 8))}))


@pytest.mark.parametrize("trainable", [True, False])
def test_frozen_encoders_get_no_gradient(trainable):
    vision = built(lambda: VisionEncoder(VisionConfig(enabled=True, width=16, heads=2, mlp=32, trainable=trainable), 32, rngs=nnx.Rngs(0)))
    graphdef, params = nnx.split(vision)
    grads = jax.jit(jax.grad(lambda p: jnp.sum(nnx.merge(graphdef, p).encode_images(jnp.ones((1, 16, 16, 3))) ** 2)))(params)
    norm = sum(float(jnp.sum(g ** 2)) for g in jax.tree.leaves(grads))
    assert (norm > 0) == trainable


def test_config_rejects_sizes_that_do_not_tile():
    with pytest.raises(ValueError, match="image_size"):
        VisionConfig(image_size=10, patch_size=4)
    with pytest.raises(ValueError, match="mel_frames"):
        AudioConfig(mel_frames=10)
