"""The built-in agentic task's warm-up: multiplication trajectories that use the `calculator` tool, some badly.

The task (`data.source: calculator`) asks for `a*b` with 4-5 digit operands, which a tiny model
cannot compute itself. A good trajectory calls the tool and copies its result:

    12345*6789=<calculator>12345*6789</calculator><out>83810205</out>83810205

A share `env.warmup_flaw_rate` of the demonstrations use the tool badly (the flaws are fixed per
record by `seed`): most write the call with `x` for the multiplication sign, which the calculator
refuses (`error: bad expression`), and then estimate the product; the others answer without calling
the tool, with the same estimate (the product rounded to two significant digits: always wrong).
The warmed-up policy then calls the tool but often badly, which only RL on the verified final
answer can fix. Each demonstration is played against the environment itself, so its tool results
are exactly the observations rollouts will see.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from rlx.data import PromptRecord
from rlx.envs.base import EnvContext
from rlx.envs.tool_env import ToolEnvironment

BAD_CALL_SHARE = 0.75  # of the flawed demonstrations; the rest answer without the tool


def estimate(product: int) -> str:
    """The product rounded to two significant digits: what answering without the tool looks like."""
    digits = len(str(product))
    return str(round(product, 2 - digits))


def demonstrations(records: Sequence[PromptRecord], context: EnvContext, seed: int) -> list[PromptRecord]:
    """`records` with whole trajectories (policy turns and tool results, after the prompt) as answers."""
    rng = np.random.default_rng(seed)
    rate = context.config.warmup_flaw_rate
    played = []
    for record in records:
        expression = record.prompt.rstrip("=")
        guess = estimate(int(record.answer))
        flaw = rng.random() < rate
        if not flaw:
            turns = [f"<calculator>{expression}</calculator>", None]  # None: copy the tool's result
        elif rng.random() < BAD_CALL_SHARE:
            turns = [f"<calculator>{expression.replace('*', 'x')}</calculator>", guess]
        else:
            turns = [guess]
        played.append(dataclasses.replace(record, answer=play(record, turns, context)))
    return played


def play(record: PromptRecord, turns: list[str | None], context: EnvContext) -> str:
    """The trajectory text of `turns` against a fresh environment (a None turn answers with the last tool result)."""
    env = ToolEnvironment(context)
    env.reset(record)
    text, result = "", ""
    for action in turns:
        action = result if action is None else action
        observation, _, done, _ = env.step(action)
        text += action + (observation or "")
        if done:
            return text
        result = _last_result(context, env, action)
    raise ValueError(f"demonstration of {record.id!r} ends without a final answer")


def _last_result(context: EnvContext, env: ToolEnvironment, action: str) -> str:
    return env.run(context.format.parse(action)[-1])[0]
