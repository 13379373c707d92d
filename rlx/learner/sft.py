"""Supervised warm-up: teacher-forced cross-entropy on reference answers (EOS included)."""

from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from rlx.data import CharTokenizer, PromptBatch
from rlx.learner.config import WarmupConfig
from rlx.learner.logprobs import response_hidden_and_scores
from rlx.learner.mtp import mtp_coefficients, mtp_loss
from rlx.learner.objective import linear_coefficients
from rlx.learner.optimizer import freeze_encoders
from rlx.learner.programs import ProgramBuilder, Schedule, Weights
from rlx.learner.train_step import NonFiniteLossError, all_finite
from rlx.parallel import rules_for
from rlx.parallel.layout import Layout


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class Demonstrations:
    tokens: jax.Array  # [B, P + R] left-padded prompt, then the right-padded answer
    start: jax.Array  # [B]
    mask: jax.Array  # [B, R] 1 on answer tokens, EOS included
    media: dict[str, jax.Array] | None = None


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
    params: Weights,
    batches: Iterator[PromptBatch],
    tokenizer: CharTokenizer,
    config: WarmupConfig,
    response_width: int,
    logprob_impl: str = "auto",
    layout: Layout | None = None,
    micro_batch_rows: int | None = None,
) -> tuple[Weights, list[float]]:
    """Runs `config.sft_steps` AdamW steps on `layout` (default: one device); returns the new weights and the loss per step.

    Each step is one optimizer step of the learner's program builder: rows over the data-parallel
    devices, gradients accumulated over micro-batches of `micro_batch_rows`.
    """
    layout = layout if layout is not None else Layout.single_device(rules_for("fsdp"))
    builder = ProgramBuilder(layout, Schedule(micro_batch_rows=micro_batch_rows))
    tx = freeze_encoders(optax.adamw(config.learning_rate), nnx.merge(graphdef, params).config)
    weights = layout.weights(params)
    opt_shardings = layout.weights(jax.eval_shape(tx.init, params))

    with_heads = "mtp" in params

    def loss(params, micro, progress):
        batch, (token_share, mtp_share) = micro
        model = nnx.merge(graphdef, params)
        prompt_len = batch.tokens.shape[1] - batch.mask.shape[1]
        hidden, scores = response_hidden_and_scores(model, batch.tokens, batch.start, prompt_len, 1.0, logprob_impl, batch.media, layout=layout)
        loss = -jnp.sum(scores.log_probs * token_share)
        if not with_heads:
            return loss, {"warmup/loss": loss}
        heads_loss, metrics = mtp_loss(model, hidden, batch.tokens, batch.start, prompt_len, mtp_share, 1.0, logprob_impl, layout)
        return loss + heads_loss, {"warmup/loss": loss, **{f"warmup/{key}": value for key, value in metrics.items()}}

    weigh = lambda batch: (linear_coefficients(batch.mask, "token-mean"), mtp_coefficients(batch.mask) if with_heads else None)
    step = builder.jit(lambda params, opt_state, rows: builder.optimizer_steps(tx, loss, weigh, params, opt_state, rows, "warmup"),
                       (weights, opt_shardings, layout.rows), (weights, opt_shardings, layout.replicated), donate_argnums=(1,))
    opt_state = builder.jit(tx.init, (weights,), opt_shardings)(params)
    losses = []
    for _ in range(config.sft_steps):
        batch = next(batches)
        answers, mask = encode_answers([r.answer for r in batch.records], tokenizer, response_width)
        rows = Demonstrations(np.concatenate([batch.tokens, answers], axis=1), batch.start, mask, batch.media)
        params, opt_state, metrics = step(params, opt_state, layout.feed(rows))
        losses.append(float(metrics["warmup/loss"][0]))
    if not bool(all_finite(params)):  # checked before a caller stores or trains on them
        raise NonFiniteLossError(f"the supervised warm-up left parameters that are not finite (step losses {losses[:4]}...); "
                                 "lower warmup.learning_rate")
    return params, losses
