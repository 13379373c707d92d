"""Qwen3 decoder in Flax NNX: RMSNorm, RoPE, GQA with q/k norm, SwiGLU or Qwen3-MoE experts, optional tied embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.attention import Attention, attention_mask
from rlx.models.config import ModelConfig
from rlx.models.encoders import AudioEncoder, VisionEncoder
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, SwiGLU, param
from rlx.models.moe import MoEBlock
from rlx.models.multimodal import Media, ModalityEmbeddings, merge_modality_embeddings


class DecoderLayer(nnx.Module):
    def __init__(self, config: ModelConfig, layer: int, *, rngs: nnx.Rngs):
        dt = jnp.dtype(config.param_dtype)
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.attn = Attention(config, rngs=rngs)
        self.post_attn_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        self.is_moe = config.is_moe_layer(layer)
        if self.is_moe:
            self.mlp = MoEBlock(config, rngs=rngs)
        else:
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size, param_dtype=dt, rngs=rngs)

    def __call__(self, x, positions, mask, cache, layer, cache_index):
        attended, cache = self.attn(self.input_norm(x), positions, mask, cache, layer, cache_index)
        x = x + attended
        mlp_in = self.post_attn_norm(x)
        mlp_out = self.mlp(mlp_in)[0] if self.is_moe else self.mlp(mlp_in)
        return x + mlp_out, cache


class Qwen3(nnx.Module):
    """Decoder-only transformer over left-padded rows.

    Column `j` of row `b` holds a real token iff `j >= start[b]`; its rotary position is
    `j - start[b]`. With a cache, the `S` new tokens sit at columns
    `cache_index .. cache_index + S - 1` (`cache_index` is an int, or `[B]` for one column per row).
    """

    def __init__(self, config: ModelConfig, *, rngs: nnx.Rngs):
        if config.vocab_size is None:
            raise ValueError("ModelConfig.vocab_size is unresolved; call config.with_vocab(tokenizer.vocab_size)")
        self.config = config
        dt = jnp.dtype(config.param_dtype)
        self.embed = param(rngs, nnx.initializers.normal(0.02), (config.vocab_size, config.hidden_size), ("vocab", "embed"), dt)
        self.layers = nnx.List([DecoderLayer(config, i, rngs=rngs) for i in range(config.num_layers)])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, nnx.initializers.normal(0.02), (config.hidden_size, config.vocab_size), ("embed", "vocab"), dt)
        self.vision = VisionEncoder(config.vision, config.hidden_size, rngs=rngs) if config.vision.enabled else None
        self.audio = AudioEncoder(config.audio, config.hidden_size, rngs=rngs) if config.audio.enabled else None

    def encode_media(self, input_ids: jax.Array, media: Media) -> list[ModalityEmbeddings]:
        """Runs the encoders on `media` (one item per modality per row) for the placeholders of `input_ids`."""
        encoders = {
            "image": (self.vision, lambda x: self.vision.encode_images(x), self.config.vision.image_token_id),
            "video": (self.vision, lambda x: self.vision.encode_video(x), self.config.vision.video_token_id),
            "audio": (self.audio, lambda x: self.audio(x), self.config.audio.audio_token_id),
        }
        merged = []
        for name, inputs in media.items():
            encoder, encode, token_id = encoders[name]
            if encoder is None:
                raise ValueError(f"a batch carries {name} inputs but the model has no encoder for them; enable model.{'audio' if name == 'audio' else 'vision'}")
            merged.append(ModalityEmbeddings(input_ids == token_id, encode(inputs)))
        return merged

    def unembedding(self) -> jax.Array:
        """[hidden, vocab] matrix that maps final hidden states to logits."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def hidden_states(
        self,
        input_ids: jax.Array,
        *,
        start: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        modality: ModalityEmbeddings | None = None,
        media: Media | None = None,
    ) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, S, hidden] (and the updated cache).

        `media` (encoder inputs by modality, see `Media`) is encoded and merged into the
        placeholder columns; `modality` merges features that were encoded already.
        """
        batch, steps = input_ids.shape
        if start is None:
            start = jnp.zeros((batch,), jnp.int32)
        cache_index = jnp.asarray(cache_index, jnp.int32)
        columns = cache_index[..., None] + jnp.arange(steps, dtype=jnp.int32)  # [S], or [B, S] per-row indices
        positions = jnp.maximum(jnp.atleast_2d(columns) - start[:, None], 0)
        num_keys = steps if cache is None else cache.max_len
        mask = attention_mask(start, columns, num_keys)
        dtype = jnp.dtype(self.config.dtype)
        x = merge_modality_embeddings(self.embed[...][input_ids].astype(dtype), modality)
        for encoded in self.encode_media(input_ids, media) if media else ():
            x = merge_modality_embeddings(x, encoded)
        for index, layer in enumerate(self.layers):
            x, cache = layer(x, positions, mask, cache, index, cache_index)
        return self.final_norm(x), cache

    def __call__(self, input_ids: jax.Array, **kwargs) -> tuple[jax.Array, KVCache | None]:
        """Float32 logits [B, S, vocab] (and the updated cache); keyword arguments as `hidden_states`."""
        hidden, cache = self.hidden_states(input_ids, **kwargs)
        logits = jnp.einsum("bsd,dv->bsv", hidden, self.unembedding().astype(hidden.dtype), preferred_element_type=jnp.float32)
        return logits, cache
