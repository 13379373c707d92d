"""Modality encoders in Flax NNX: a vision encoder (images, and video as sampled frames) and an audio encoder.

Both end in a projector into the LLM's width, so each item becomes a fixed number of
LLM-width tokens that the merge point (`rlx.models.multimodal`) scatters into the
placeholder columns of the prompt.

Positions. Inside an encoder, a token's position is a learned embedding: a patch's index
in its frame (vision), a frame's index in the clip (video, added to every patch of the
frame), a downsampled time step (audio). In the LLM, encoder tokens are ordinary columns of
the sequence: they take consecutive 1-D rotary positions exactly like text tokens.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.encoder_config import AudioConfig, EncoderBlocksConfig, VisionConfig
from rlx.models.layers import RMSNorm, param

_normal = nnx.initializers.normal(0.02)
_lecun = nnx.initializers.lecun_normal()


class EncoderBlock(nnx.Module):
    """Pre-norm bidirectional self-attention and GELU MLP over `[N, T, width]`."""

    def __init__(self, config: EncoderBlocksConfig, *, rngs: nnx.Rngs):
        width, self.heads = config.width, config.heads
        self.attn_norm = RMSNorm(width, 1e-6, "enc_embed", param_dtype=jnp.float32, rngs=rngs)
        self.qkv = param(rngs, _lecun, (width, 3 * width), ("enc_embed", "enc_qkv"), jnp.float32)
        self.out = param(rngs, _lecun, (width, width), ("enc_qkv", "enc_embed"), jnp.float32)
        self.mlp_norm = RMSNorm(width, 1e-6, "enc_embed", param_dtype=jnp.float32, rngs=rngs)
        self.up = param(rngs, _lecun, (width, config.mlp), ("enc_embed", "enc_mlp"), jnp.float32)
        self.down = param(rngs, _lecun, (config.mlp, width), ("enc_mlp", "enc_embed"), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        n, t, width = x.shape
        q, k, v = jnp.split(self.attn_norm(x) @ self.qkv[...], 3, axis=-1)
        split = lambda a: a.reshape(n, t, self.heads, width // self.heads)
        attended = jax.nn.dot_product_attention(split(q), split(k), split(v)).reshape(n, t, width)
        x = x + attended @ self.out[...]
        return x + jax.nn.gelu(self.mlp_norm(x) @ self.up[...]) @ self.down[...]


class Projector(nnx.Module):
    """Encoder width -> LLM width: norm, linear, GELU, linear."""

    def __init__(self, width: int, llm_width: int, *, rngs: nnx.Rngs):
        self.norm = RMSNorm(width, 1e-6, "enc_embed", param_dtype=jnp.float32, rngs=rngs)
        self.first = param(rngs, _lecun, (width, llm_width), ("enc_embed", "embed"), jnp.float32)
        self.second = param(rngs, _lecun, (llm_width, llm_width), ("embed", "embed_out"), jnp.float32)

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.gelu(self.norm(x) @ self.first[...]) @ self.second[...]


def _frozen_unless(trainable: bool, features: jax.Array) -> jax.Array:
    return features if trainable else jax.lax.stop_gradient(features)


class VisionEncoder(nnx.Module):
    """Images `[B, S, S, 3]` -> `[B, patches, llm_width]`; videos `[B, F, S, S, 3]` -> `[B, F * patches, llm_width]`."""

    def __init__(self, config: VisionConfig, llm_width: int, *, rngs: nnx.Rngs):
        self.config = config
        patch_dim = config.patch_size * config.patch_size * 3
        self.patch_embed = param(rngs, _lecun, (patch_dim, config.width), ("enc_patch", "enc_embed"), jnp.float32)
        self.patch_position = param(rngs, _normal, (config.patches, config.width), (None, "enc_embed"), jnp.float32)
        self.frame_position = param(rngs, _normal, (config.video_frames, config.width), (None, "enc_embed"), jnp.float32)
        self.blocks = nnx.List([EncoderBlock(config, rngs=rngs) for _ in range(config.layers)])
        self.projector = Projector(config.width, llm_width, rngs=rngs)

    def _patches(self, images: jax.Array) -> jax.Array:
        """`[N, S, S, 3]` -> `[N, patches, width]` patch embeddings with their in-frame positions."""
        n, size, p = images.shape[0], self.config.image_size, self.config.patch_size
        grid = size // p
        patches = images.reshape(n, grid, p, grid, p, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, grid * grid, p * p * 3)
        return patches @ self.patch_embed[...] + self.patch_position[...]

    def _encode(self, tokens: jax.Array) -> jax.Array:
        """`[B, frames * patches, width]` -> `[B, frames * image_tokens, llm_width]`."""
        for block in self.blocks:
            tokens = block(tokens)
        b, m = tokens.shape[0], self.config.spatial_merge
        grid = self.config.image_size // self.config.patch_size
        squares = tokens.reshape(b, -1, grid // m, m, grid // m, m, self.config.width)
        merged = squares.mean(axis=(3, 5)).reshape(b, -1, self.config.width)
        return _frozen_unless(self.config.trainable, self.projector(merged))

    def encode_images(self, images: jax.Array) -> jax.Array:
        return self._encode(self._patches(images.astype(jnp.float32)))

    def encode_video(self, frames: jax.Array) -> jax.Array:
        """Frames attend across the whole clip; each frame's patches carry its temporal embedding."""
        b, f = frames.shape[:2]
        patches = self._patches(frames.reshape(b * f, *frames.shape[2:]).astype(jnp.float32))
        patches = patches.reshape(b, f, -1, self.config.width) + self.frame_position[...][None, :f, None, :]
        return self._encode(patches.reshape(b, -1, self.config.width))


class AudioEncoder(nnx.Module):
    """Log-mel `[B, mel_frames, n_mels]` -> `[B, mel_frames // 4, llm_width]`: two stride-2 convs, blocks, projector."""

    def __init__(self, config: AudioConfig, llm_width: int, *, rngs: nnx.Rngs):
        self.config = config
        self.conv1 = param(rngs, _lecun, (3, config.n_mels, config.width), (None, "enc_mel", "enc_embed"), jnp.float32)
        self.conv2 = param(rngs, _lecun, (3, config.width, config.width), (None, "enc_embed", "enc_embed_out"), jnp.float32)
        self.time_position = param(rngs, _normal, (config.audio_tokens, config.width), (None, "enc_embed"), jnp.float32)
        self.blocks = nnx.List([EncoderBlock(config, rngs=rngs) for _ in range(config.layers)])
        self.projector = Projector(config.width, llm_width, rngs=rngs)

    def __call__(self, mels: jax.Array) -> jax.Array:
        x = mels.astype(jnp.float32)
        for kernel in (self.conv1, self.conv2):
            x = jax.nn.gelu(jax.lax.conv_general_dilated(x, kernel[...], (2,), "SAME", dimension_numbers=("NWC", "WIO", "NWC")))
        x = x + self.time_position[...]
        for block in self.blocks:
            x = block(x)
        return _frozen_unless(self.config.trainable, self.projector(x))
