"""Qwen3 decoder in Flax NNX: RMSNorm, RoPE, GQA with q/k norm, SwiGLU or Qwen3-MoE experts, optional tied embeddings."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from rlx.models.activation_sharding import constrain, run_encoder
from rlx.models.config import ModelConfig
from rlx.models.decoder_layer import DecoderLayer
from rlx.models.encoders import AudioEncoder, VisionEncoder
from rlx.models.kv_cache import KVCache
from rlx.models.layers import RMSNorm, param
from rlx.models.mtp import MTPHeads
from rlx.models.multimodal import Media, ModalityEmbeddings, merge_modality_embeddings


RESIDUAL = ("batch", None, None)  # logical names of the residual stream [B, S, hidden]

REMAT_POLICIES = {
    "none": None,
    "full": jax.checkpoint_policies.nothing_saveable,
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


class LayerStack(nnx.Module):
    """`count` decoder layers of one kind (dense or MoE), global indices `first ..`, weights stacked on a
    leading `layers` axis and run by one `lax.scan`: compile time stays flat as depth grows."""

    def __init__(self, config: ModelConfig, first: int, count: int, moe: bool, *, rngs: nnx.Rngs):
        self.first, self.count, self.is_moe = first, count, moe

        @nnx.split_rngs(splits=count)
        @nnx.vmap(in_axes=(0,), out_axes=0, axis_size=count)
        def stacked(rngs: nnx.Rngs) -> DecoderLayer:
            return DecoderLayer(config, moe, rngs=rngs)

        self.layer = stacked(rngs)
        for _, variable in nnx.iter_graph(self.layer):
            if isinstance(variable, nnx.Variable) and variable.get_metadata().get("out_sharding") is not None:
                variable.set_metadata(out_sharding=("layers", *variable.get_metadata()["out_sharding"]))

    def __call__(self, x, positions, q_columns, start, cache, cache_index, kv_len, remat: str, routes=None):
        """(x, cache, routes [count, B, S, k] the router chose per layer, None for dense layers);
        `routes [count, B, S, k]` are replayed (MoE stacks only)."""
        graphdef, weights = nnx.split(self.layer)

        def one_layer(carry, per_layer):
            layer_weights, layer_routes = per_layer
            x, cache, index = carry
            layer = nnx.merge(graphdef, layer_weights)
            x, cache, own = layer(x, positions, q_columns, start, cache, index, cache_index, kv_len, layer_routes)
            return (constrain(x, RESIDUAL), cache, index + 1), own

        if REMAT_POLICIES[remat] is not None:
            one_layer = jax.checkpoint(one_layer, policy=REMAT_POLICIES[remat])
        (x, cache, _), own = jax.lax.scan(one_layer, (x, cache, jnp.int32(self.first)), (weights, routes))
        return x, cache, own


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
        self.layers = nnx.List([LayerStack(config, first, count, moe, rngs=rngs) for first, count, moe in config.layer_runs()])
        self.final_norm = RMSNorm(config.hidden_size, config.rms_norm_eps, "embed", param_dtype=dt, rngs=rngs)
        if not config.tie_word_embeddings:
            self.lm_head = param(rngs, nnx.initializers.normal(0.02), (config.hidden_size, config.vocab_size), ("embed", "vocab"), dt)
        self.vision = VisionEncoder(config.vision, config.hidden_size, rngs=rngs) if config.vision.enabled else None
        self.audio = AudioEncoder(config.audio, config.hidden_size, rngs=rngs) if config.audio.enabled else None
        # Made last, so the trunk draws the same random weights with and without the heads.
        self.mtp = MTPHeads(config, rngs=rngs) if config.mtp.enabled else None

    def encode_media(self, input_ids: jax.Array, media: Media, media_columns: int | None = None) -> list[ModalityEmbeddings]:
        """Runs the encoders on `media` (one item per modality per row) for the placeholders of `input_ids`
        in its first `media_columns` columns (default: all): a placeholder id a response happens to
        contain is text, as it was when the sampler produced it."""
        columns = jnp.arange(input_ids.shape[1])[None, :]
        in_prompt = columns < (input_ids.shape[1] if media_columns is None else media_columns)
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
            merged.append(ModalityEmbeddings((input_ids == token_id) & in_prompt, run_encoder(encode, inputs)))
        return merged

    def unembedding(self) -> jax.Array:
        """[hidden, vocab] matrix that maps final hidden states to logits."""
        if self.config.tie_word_embeddings:
            return self.embed[...].T
        return self.lm_head[...]

    def hidden_states(self, input_ids: jax.Array, **kwargs) -> tuple[jax.Array, KVCache | None]:
        """Final-normed hidden states [B, S, hidden] (and the updated cache); keyword arguments as
        `hidden_states_and_routes`."""
        hidden, cache, _ = self.hidden_states_and_routes(input_ids, **kwargs)
        return hidden, cache

    def hidden_states_and_routes(
        self,
        input_ids: jax.Array,
        *,
        start: jax.Array | None = None,
        cache: KVCache | None = None,
        cache_index: jax.Array | int = 0,
        modality: ModalityEmbeddings | None = None,
        media: Media | None = None,
        media_columns: int | None = None,
        kv_len: int | None = None,
        remat: str = "none",
        routes: jax.Array | None = None,
    ) -> tuple[jax.Array, KVCache | None, jax.Array | None]:
        """Final-normed hidden states [B, S, hidden], the updated cache, and the experts each MoE
        layer's router chooses for each token: int32 [B, S, moe_layers, k], MoE layers in layer
        order (None for a dense model).

        `media` (encoder inputs by modality, see `Media`) is encoded and merged into the
        placeholder columns among the first `media_columns` (the prompt's; default all);
        `modality` merges features that were encoded already. With a
        cache, attention reads only its first `kv_len` columns (default: all; every query's
        column must lie below it). `remat` (`none`, `full`, `save_dots`) rematerialises each
        decoder layer in the backward pass instead of keeping its activations. `routes`
        [B, S, moe_layers, k] replays recorded experts (rollout routing replay, `rlx.models.moe`):
        each MoE layer uses them instead of its own choice, except for tokens whose ids are -1;
        the returned routes stay the router's own choice.
        """
        start, cache_index, q_columns, positions = _columns(input_ids.shape, start, cache_index)
        if remat not in REMAT_POLICIES:
            raise ValueError(f"remat {remat!r} is not one of {', '.join(REMAT_POLICIES)}")
        dtype = jnp.dtype(self.config.dtype)
        x = merge_modality_embeddings(self.embed[...][input_ids].astype(dtype), modality)
        for encoded in self.encode_media(input_ids, media, media_columns) if media else ():
            x = merge_modality_embeddings(x, encoded)
        x = constrain(x, RESIDUAL)
        chosen, moe_layer = [], 0
        for stack in self.layers:
            replayed = None
            if routes is not None and stack.is_moe:  # the stack's layers as a leading scan axis: [count, B, S, k]
                replayed = jnp.moveaxis(routes[:, :, moe_layer:moe_layer + stack.count], 2, 0)
            x, cache, own = stack(x, positions, q_columns, start, cache, cache_index, kv_len, remat, replayed)
            if own is not None:
                chosen.append(jnp.moveaxis(own, 0, 2))
                moe_layer += stack.count
        own_routes = jnp.concatenate(chosen, axis=2) if chosen else None
        return constrain(self.final_norm(x), RESIDUAL), cache, own_routes

    def mtp_hidden_states(
        self, hidden: jax.Array, next_tokens: jax.Array, *, start: jax.Array | None = None, cache: KVCache | None = None,
        cache_index: jax.Array | int = 0, kv_len: int | None = None, trunk_gradient: bool = True,
    ) -> tuple[jax.Array, KVCache | None]:
        """The MTP head's final-normed hidden states [B, S, hidden] (and the updated cache): column t drafts the
        token after `next_tokens[:, t]` from the trunk's `hidden[:, t]` (which predicted `next_tokens[:, t]`).

        Columns, `start`, `cache_index` and `kv_len` as in `hidden_states_and_routes`; the MTP layer's keys and
        values live in cache layer `num_layers`. `trunk_gradient: false` stops gradients into the trunk's hidden
        states and embedding (`model.mtp.train_trunk`).
        """
        start, cache_index, q_columns, positions = _columns(next_tokens.shape, start, cache_index)
        embed = self.embed[...] if trunk_gradient else jax.lax.stop_gradient(self.embed[...])
        hidden = hidden if trunk_gradient else jax.lax.stop_gradient(hidden)
        out, cache = self._mtp_heads()(hidden, embed[next_tokens].astype(hidden.dtype), positions, q_columns, start, cache,
                                       self.config.num_layers, cache_index, kv_len)
        return constrain(out, RESIDUAL), cache

    def mtp_last_hidden(self, hidden: jax.Array, next_tokens: jax.Array, *, start: jax.Array, cache: KVCache, cache_index: jax.Array,
                        kv_len: int | None = None) -> tuple[jax.Array, KVCache]:
        """`mtp_hidden_states` at the last column only, [B, hidden] (a decode step's draft), and the cache with every
        column's MTP keys and values; the earlier columns skip the MTP layer's output (`MTPHeads.last`)."""
        start, cache_index, q_columns, positions = _columns(next_tokens.shape, start, cache_index)
        return self._mtp_heads().last(hidden, self.embed[...][next_tokens].astype(hidden.dtype), positions, q_columns, start, cache,
                                      self.config.num_layers, cache_index, kv_len)

    def mtp_cache(self, hidden: jax.Array, next_tokens: jax.Array, *, start: jax.Array, cache: KVCache, cache_index: jax.Array | int) -> KVCache:
        """The cache `mtp_hidden_states` leaves (the MTP layer's keys and values of every column), without its outputs."""
        start, cache_index, _, positions = _columns(next_tokens.shape, start, cache_index)
        return self._mtp_heads().write_keys_values(hidden, self.embed[...][next_tokens].astype(hidden.dtype), positions, cache,
                                                   self.config.num_layers, cache_index)

    def _mtp_heads(self):
        if self.mtp is None:
            raise ValueError("the model has no MTP head; enable model.mtp")
        return self.mtp

    def logits(self, hidden: jax.Array) -> jax.Array:
        """Float32 logits [..., vocab] of final hidden states [..., hidden], computed in the hidden states' dtype."""
        return jnp.einsum("...d,dv->...v", hidden, self.unembedding().astype(hidden.dtype), preferred_element_type=jnp.float32)

    def __call__(self, input_ids: jax.Array, **kwargs) -> tuple[jax.Array, KVCache | None]:
        """Float32 logits [B, S, vocab] (and the updated cache); keyword arguments as `hidden_states`."""
        hidden, cache = self.hidden_states(input_ids, **kwargs)
        return self.logits(hidden), cache


def _columns(shape: tuple[int, int], start: jax.Array | None, cache_index: jax.Array | int):
    """(start [B], cache_index, cache columns [B, S], rotary positions [B, S]) of `S` new tokens in `B` left-padded rows."""
    batch, steps = shape
    if start is None:
        start = jnp.zeros((batch,), jnp.int32)
    cache_index = jnp.asarray(cache_index, jnp.int32)
    columns = cache_index[..., None] + jnp.arange(steps, dtype=jnp.int32)  # [S], or [B, S] per-row indices
    q_columns = jnp.broadcast_to(jnp.atleast_2d(columns), (batch, steps))
    return start, cache_index, q_columns, jnp.maximum(q_columns - start[:, None], 0)
