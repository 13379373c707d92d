"""Supervised warm-up: teacher-forced cross-entropy on reference answers (EOS included)."""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.data import CharTokenizer, PromptBatch
from rlx.learner.config import WarmupConfig
from rlx.learner.logprobs import response_log_probs
from rlx.learner.optimizer import freeze_encoders


def encode_answers(answers: Sequence[str], tokenizer: CharTokenizer, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Right-padded answer tokens ending in EOS, and their mask. Answers longer than `width` are cut."""
    tokens = np.full((len(answers), width), tokenizer.pad_id, np.int32)
    mask = np.zeros((len(answers), width), np.float32)
    for row, answer in enumerate(answers):
        ids = (tokenizer.encode(answer, bos=False) + [tokenizer.eos_id])[:width]
        tokens[row, : len(ids)] = ids
        mask[row, : len(ids)] = 1.0
    return tokens, mask


def supervised_warmup(
    graphdef: nnx.GraphDef,
    params: nnx.State,
    batches: Iterator[PromptBatch],
    tokenizer: CharTokenizer,
    config: WarmupConfig,
    response_width: int,
    logprob_impl: str = "auto",
) -> tuple[nnx.State, list[float]]:
    """Runs `config.sft_steps` AdamW steps; returns the new weights and the loss per step."""
    tx = freeze_encoders(optax.adamw(config.learning_rate), nnx.merge(graphdef, params).config)
    opt_state = tx.init(params)

    def loss_fn(params, tokens, start, mask, media):
        model = nnx.merge(graphdef, params)
        log_probs, _ = response_log_probs(model, tokens, start, tokens.shape[1] - mask.shape[1], 1.0, logprob_impl, media)
        return -jnp.sum(log_probs * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    @jax.jit
    def step(params, opt_state, tokens, start, mask, media):
        loss, grads = jax.value_and_grad(loss_fn)(params, tokens, start, mask, media)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    losses = []
    for _ in range(config.sft_steps):
        batch = next(batches)
        answers, mask = encode_answers([r.answer for r in batch.records], tokenizer, response_width)
        tokens = np.concatenate([batch.tokens, answers], axis=1)
        params, opt_state, loss = step(params, opt_state, tokens, batch.start, mask, batch.media)
        losses.append(float(loss))
    return params, losses
