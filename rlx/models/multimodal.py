"""The merge point where modality-encoder outputs replace placeholder-token embeddings."""

from __future__ import annotations

import dataclasses

from typing import Mapping

import jax
import jax.numpy as jnp

Media = Mapping[str, jax.Array]
"""Encoder inputs by modality, one item per row (zeros where a row has none):
`image [B, S, S, 3]` and `video [B, F, S, S, 3]` in [-1, 1], `audio [B, mel_frames, n_mels]` log-mel."""


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class ModalityEmbeddings:
    """Encoder outputs for one batch, in prompt order.

    placeholder_mask [B, S]: True where the token is a modality placeholder.
    features [B, M, D]: row b's encoder tokens; the k-th True column of row b takes
    features[b, k]. Rows may use fewer than M features (the rest is padding).
    """

    placeholder_mask: jax.Array
    features: jax.Array


def merge_modality_embeddings(text_embeds: jax.Array, modality: ModalityEmbeddings | None) -> jax.Array:
    """Scatters encoder features into the placeholder columns of `text_embeds [B, S, D]`."""
    if modality is None:
        return text_embeds
    mask = modality.placeholder_mask
    if mask.shape != text_embeds.shape[:2]:
        raise ValueError(f"placeholder_mask {mask.shape} does not match embeddings {text_embeds.shape[:2]}")
    if modality.features.shape[-1] != text_embeds.shape[-1]:
        raise ValueError(
            f"encoder features have width {modality.features.shape[-1]}, the model {text_embeds.shape[-1]}"
        )
    order = jnp.clip(jnp.cumsum(mask, axis=1) - 1, 0, modality.features.shape[1] - 1)
    gathered = jnp.take_along_axis(modality.features, order[..., None], axis=1)
    return jnp.where(mask[..., None], gathered.astype(text_embeds.dtype), text_embeds)
