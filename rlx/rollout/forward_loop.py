"""The forwards of one `generate` call: up to `steps`, ending early once enough slots have finished.

A slot whose response ends inside a call idles for the rest of it, and a new sample can only take the slot
between calls. When samples wait for slots, the driver asks a call to end once `end_after` slots that were
decoding at its start are done (`end_after` <= 0: never, all `steps` forwards run), so freed slots are refilled
after the forward they ended in rather than after the call's last. The outputs of forwards not run are zeros
(invalid tokens), and the call reports how many forwards ran.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from rlx.rollout.state import DecodeState

Step = Callable[[DecodeState], tuple[DecodeState, Any]]


def run_forwards(step: Step, state: DecodeState, steps: int, end_after: jax.Array) -> tuple[DecodeState, Any, jax.Array]:
    """(state after the forwards run, `step`'s outputs stacked `[steps, ...]` with zeros past the last forward run, the
    number of forwards run) of `step` (one forward on every slot) applied up to `steps` times."""
    decoding = ~state.done
    outputs = jax.tree.map(lambda out: jnp.zeros((steps, *out.shape), out.dtype), jax.eval_shape(step, state)[1])

    def more(carry) -> jax.Array:
        ran, state, _ = carry
        ended = jnp.sum(decoding & state.done)
        return (ran < steps) & ((end_after <= 0) | (ended < end_after))

    def forward(carry):
        ran, state, outputs = carry
        state, out = step(state)
        return ran + 1, state, jax.tree.map(lambda all_, one: all_.at[ran].set(one), outputs, out)

    ran, state, outputs = jax.lax.while_loop(more, forward, (jnp.int32(0), state, outputs))
    return state, outputs, ran


@dataclasses.dataclass
class DecodeCounts:
    """What a driver ran so far: prefill calls, generate calls read, the forwards they ran, and slot-forwards of held
    slots (the forwards in which a slot's sample emitted a token: the rest of `forwards x slots` idled)."""

    prefills: int = 0
    calls: int = 0
    forwards: int = 0
    slot_forwards: int = 0

    def add(self, result, held: np.ndarray) -> None:
        """Counts a generate call's `ResultTokens` (read to the host), `held [slots]` the slots whose sample it serves."""
        emitted = result.valid[held, 0::2] if result.drafts else result.valid[held]
        self.calls += 1
        self.forwards += result.columns_run // (2 if result.drafts else 1)
        self.slot_forwards += int(emitted.sum())
