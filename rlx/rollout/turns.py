"""Multi-turn rollouts: a sample is a trajectory that alternates policy turns and environment observations.

An environment (`rlx.envs`: any object with `reset(record)` and `step(action)`, either may be
`async`) is made per trajectory. `reset` runs when the driver takes the prompt; it may return the
prompt to use (text or token ids; all samples of a prompt must get the same) or None (the data
pipeline's prompt). A policy turn ends at a stop token or stop string (the environment's
turn-ending strings, e.g. `</tool_call>`, are added to the driver's); its text goes to `step` on a
thread pool while the other slots keep decoding (continuous batching). `step` returns
`(observation, reward, done, info)`:

* `done`: the trajectory ends; its reward is the sum of the rewards of its steps (final and
  per-turn rewards alike: the advantage estimators see one return per trajectory, so per-turn
  rewards add up rather than being credited to their turn).
* otherwise the observation (text, encoded as is, or token ids) is appended to the slot by
  prefilling it onto the slot's KV cache (`Engine.extend`: nothing before is recomputed) and the
  policy's next turn is sampled from there.

The learner trains on exactly these token ids: sampled ones with mask 1, their behaviour log-probs
and policy versions; observation tokens with mask 0, log-prob 0 and version -1 (never in the loss
or the mismatch metrics). Limits: `max_turns` policy turns, and `max_tokens` (the request's, i.e.
`rollout.max_new_tokens`) tokens of policy turns and observations together. A trajectory that hits
one before its environment is done is truncated: it keeps the rewards it got (counted in
`agent/truncated`). An environment that raises (or returns something malformed) ends its
trajectory with `on_error_reward`, counted in `agent/env_errors`; the run goes on.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import inspect
import logging
import math
from collections import Counter
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence

import numpy as np

from rlx.rollout.driver import Completion, Request

if TYPE_CHECKING:
    from rlx.rollout.driver import RolloutDriver, _Session

log = logging.getLogger(__name__)


class EnvironmentError_(RuntimeError):
    """An environment broke its contract (raised, or returned something malformed)."""


def call(fn: Callable, *args: Any) -> Any:
    """`fn(*args)`, run to completion when `fn` is `async`."""
    result = fn(*args)
    return asyncio.run(result) if inspect.isawaitable(result) else result


@dataclasses.dataclass
class _Trajectory:
    env: Any
    failed: bool = False  # reset raised: the first turn end finishes the trajectory
    turns: int = 0
    reward: float = 0.0
    stats: Counter = dataclasses.field(default_factory=Counter)
    pending: concurrent.futures.Future | None = None  # the environment's answer to the last turn


@dataclasses.dataclass
class _SessionTrajectories:
    """A session's multi-turn state: environments reset for samples not placed yet, and each slot's trajectory."""

    fresh: dict[tuple[int, int], _Trajectory] = dataclasses.field(default_factory=dict)  # by (id(request), sample)
    by_slot: dict[int, _Trajectory] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class _Step:
    observation: np.ndarray | None  # token ids
    reward: float
    done: bool
    info: dict[str, float]


class MultiTurn:
    """Runs a driver's samples as multi-turn trajectories (see the module docstring).

    `make_env()` returns a fresh environment; `tokenizer` decodes turns and encodes text
    observations; `stop_strings` end a policy turn; `workers` threads run environment calls.
    """

    def __init__(self, make_env: Callable[[], Any], tokenizer: Any, *, max_turns: int, on_error_reward: float = 0.0,
                 stop_strings: Sequence[str] = (), workers: int = 8):
        if max_turns < 1:
            raise ValueError(f"rollout.max_turns must be >= 1 policy turns, got {max_turns}")
        if tokenizer is None:
            raise ValueError("multi-turn rollouts decode turns and encode observations: build the engine with a tokenizer")
        self.make_env, self.tokenizer = make_env, tokenizer
        self.max_turns, self.on_error_reward, self.stop_strings = max_turns, on_error_reward, tuple(stop_strings)
        self.pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="rlx-env")

    # -- admission: environments are made and reset when the driver takes a prompt ----------------------
    def attach(self, session: "_Session") -> None:
        """Makes `session` reset an environment per sample of every request it pulls."""
        pull = session.pull
        state = session.trajectories = _SessionTrajectories()

        def pull_and_reset() -> Request | None:
            request = pull()
            if request is None:
                return None
            if request.record is None:
                raise ValueError(f"request {request.tag!r}: multi-turn rollouts reset their environment with the prompt's record; pass Request(record=...)")
            reset = list(self.pool.map(lambda _: self._reset(request), range(request.samples)))
            request = self._prompted(request, reset)
            for sample, (trajectory, _) in enumerate(reset):
                state.fresh[(id(request), sample)] = trajectory
            return request

        session.pull = pull_and_reset

    def _reset(self, request: Request) -> tuple[_Trajectory, np.ndarray | None]:
        try:
            env = self.make_env()
            prompt = call(env.reset, request.record)
            return _Trajectory(env), None if prompt is None else self._tokens(prompt, bos=True)
        except Exception as err:  # a plug-in may raise anything; counted, scored on_error_reward
            log.warning("environment reset failed on record %r: %r", request.record.id, err)
            return _Trajectory(None, failed=True), None

    @staticmethod
    def _prompted(request: Request, reset: list[tuple[_Trajectory, np.ndarray | None]]) -> Request:
        """The request with the prompt its environments' `reset` gave (they must agree), or as it was."""
        prompts = [prompt for trajectory, prompt in reset if prompt is not None]
        if not prompts:
            return request
        if any(not np.array_equal(prompt, prompts[0]) for prompt in prompts) or len(prompts) < len(reset):
            raise ValueError(f"record {request.record.id!r}: the environments of its {request.samples} samples returned different "
                             "prompts from reset; samples of one prompt (a GRPO group) must share it")
        return dataclasses.replace(request, prompt=prompts[0])

    # -- turn ends: the environment steps off the decode loop ---------------------------------------------
    def turn_ended(self, driver: "RolloutDriver", session: "_Session", slot: int) -> Completion | None:
        """A policy turn of `slot` ended: sends it to the environment (the slot waits) or, at a limit
        or for a broken environment, ends the trajectory."""
        trajectory = self._trajectory(session, slot)
        buffers = session.buffers
        if trajectory.failed:
            return self._finish(driver, session, slot, self.on_error_reward, env_error=True)
        if not buffers.stopped[slot]:  # the token limit (or the cache row) ended the turn mid-way
            return self._finish(driver, session, slot, trajectory.reward, truncated=True)
        trajectory.turns += 1
        action = self.tokenizer.decode(buffers.tokens[slot, buffers.turn_start[slot]:buffers.count[slot]])
        trajectory.pending = self.pool.submit(self._step, trajectory.env, action)
        return None

    @staticmethod
    def _trajectory(session: "_Session", slot: int) -> _Trajectory:
        """The slot's trajectory; its first turn end claims the environment reset for its sample
        (a finished trajectory leaves its slot, so one held there is always the owner's)."""
        state = session.trajectories
        if slot not in state.by_slot:
            admitted, sample = session.owner[slot]
            state.by_slot[slot] = state.fresh.pop((id(admitted.request), sample))
        return state.by_slot[slot]

    def _step(self, env: Any, action: str) -> _Step:
        observation, reward, done, info = call(env.step, action)
        reward = float(reward)
        if not math.isfinite(reward):
            raise EnvironmentError_(f"step returned a non-finite reward {reward}")
        if not isinstance(info, dict):
            raise EnvironmentError_(f"step returned info of type {type(info).__name__}, expected a dict")
        tokens = None if observation is None else self._tokens(observation, bos=False)
        if not done and (tokens is None or len(tokens) == 0):
            raise EnvironmentError_("step returned done=False without an observation to continue from")
        counts = {name: float(value) for name, value in info.items() if isinstance(value, (int, float)) and not isinstance(value, bool)}
        return _Step(tokens, reward, bool(done), counts)

    def _tokens(self, observation: Any, *, bos: bool) -> np.ndarray:
        if isinstance(observation, str):
            return np.asarray(self.tokenizer.encode(observation, bos=bos), np.int32)
        tokens = np.asarray(observation)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise EnvironmentError_(f"an observation must be text or a 1-d sequence of token ids, got {type(observation).__name__}")
        return tokens.astype(np.int32)

    # -- observations: waiting slots whose environment answered continue or end ---------------------------
    def resume(self, driver: "RolloutDriver", session: "_Session") -> Iterator[Completion]:
        """Ends or continues every waiting slot whose environment has answered; observations of all
        continuing slots are appended in one `Engine.extend` call."""
        continuing: list[tuple[int, np.ndarray]] = []
        for slot in session.live_slots():
            trajectory = session.trajectories.by_slot.get(slot)
            if session.buffers.active[slot] or trajectory is None or trajectory.pending is None or not trajectory.pending.done():
                continue
            future, trajectory.pending = trajectory.pending, None
            try:
                step = future.result()
            except Exception as err:  # the environment's failure, not the run's
                log.warning("environment step failed: %r; the trajectory scores %s", err, self.on_error_reward)
                yield self._finish(driver, session, slot, self.on_error_reward, env_error=True)
                continue
            trajectory.reward += step.reward
            trajectory.stats.update(step.info)
            room = session.buffers.limit[slot] - session.buffers.count[slot]
            if step.done:
                yield self._finish(driver, session, slot, trajectory.reward)
            elif trajectory.turns >= self.max_turns or len(step.observation) >= room:
                yield self._finish(driver, session, slot, trajectory.reward, truncated=True)
            else:
                continuing.append((slot, step.observation))
        if continuing:
            columns = [session.buffers.observe(slot, tokens, session.step, driver.version) for slot, tokens in continuing]
            session.state = driver.engine.extend(driver.params, session.state, [slot for slot, _ in continuing],
                                                 [tokens for _, tokens in continuing], columns)

    def wait(self, session: "_Session") -> None:
        """Blocks until some waiting slot's environment has answered."""
        pending = [t.pending for t in session.trajectories.by_slot.values() if t.pending is not None]
        if pending:
            concurrent.futures.wait(pending, return_when=concurrent.futures.FIRST_COMPLETED)

    def _finish(self, driver: "RolloutDriver", session: "_Session", slot: int, reward: float, *, truncated: bool = False,
                env_error: bool = False) -> Completion:
        trajectory = session.trajectories.by_slot.pop(slot)
        stats = {**trajectory.stats, "turns": float(trajectory.turns), "truncated": float(truncated), "env_errors": float(env_error)}
        return driver.complete(session, slot, reward, stats)

    # -- metrics ------------------------------------------------------------------------------------------
    @staticmethod
    def metrics(completions: Sequence[Completion]) -> dict[str, float]:
        """`agent/turns_mean`, `agent/truncated` (share of trajectories), `agent/env_errors` (count), and per
        trajectory means of the environments' numeric `info` (e.g. `agent/tool_calls`, `agent/tool_errors`)."""
        stats = [c.stats for c in completions if c.stats is not None]
        if not stats:
            return {}
        names = sorted({name for s in stats for name in s})
        means = {name: float(np.mean([s.get(name, 0.0) for s in stats])) for name in names}
        metrics = {f"agent/{name}": value for name, value in means.items() if name not in ("turns", "env_errors")}
        metrics["agent/turns_mean"] = means["turns"]
        metrics["agent/env_errors"] = float(sum(s["env_errors"] for s in stats))
        return metrics

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
