"""The generator role's state and work, built once per process that generates: the prompt stream, the rollout
backend (its own copy of the weights, swapped at each step's start from `mailbox`), the reward and the algorithm's
batch shaping. The `Trainer` builds one beside the learner (the thread backend); the process backend's child
(`rlx.services.generator_child`) builds one from the config alone, with no learner or optimizer state."""

from __future__ import annotations

import time
from typing import Any, Callable

import jax
import numpy as np
from flax import nnx

from rlx.algorithms import overlong_penalty
from rlx.config import Config
from rlx.data import PromptRecord, PromptStream, load_task
from rlx.data.tasks import TaskData
from rlx.envs import Environments, load_environments
from rlx.models import ModelConfig
from rlx.models.weights import abstract_model
from rlx.parallel import role_meshes, rules_for
from rlx.parallel.processes import Processes
from rlx.rewards import EarlyScores, RewardFn, Scores, resolve_reward_fn
from rlx.rollout import GroupRollout, MultiTurn, build_backend, build_engine, sampling_params
from rlx.rollout.engine import Engine
from rlx.rollout.partial import PartialRollouts
from rlx.services.dynamic_sampling import ScoredRollout, fill_with_varied_groups
from rlx.services.evaluation import policy_tokens, rollout_scores
from rlx.services.generator import WeightMailbox
from rlx.services.media import media_spec
from rlx.services.timeline import NO_TIMELINE, Timeline
from rlx.services.transfer import ScoredBatch


def prompt_stream(config: Config, tokenizer: Any, media: Any, processes: Processes, records: list[PromptRecord], batch_size: int,
                  seed: int, what: str) -> PromptStream:
    """`batch_size` prompts per batch in all; this process's stream yields its share of each batch."""
    data = config.data
    processes.share(batch_size, what)
    return PromptStream(records, tokenizer, batch_size, data.max_prompt_len, seed, media, data.media_workers, processes.index, processes.count)


def generator_engine(config: Config, model_config: ModelConfig, tokenizer: Any, graphdef: nnx.GraphDef, params: nnx.State,
                     mesh: jax.sharding.Mesh) -> Engine:
    """The rollout engine on the generator's `mesh`; `params` concrete (published at once) or abstract (weights come later)."""
    return build_engine(graphdef, params, model_config, config.rollout, config.data.max_prompt_len, eos_id=tokenizer.eos_id,
                        pad_id=tokenizer.pad_id, tokenizer=tokenizer, mesh=mesh, rules=rules_for(config.parallel.generator_rules),
                        record_routes=config.algorithm.routing_replay != "off")


def multi_turn(config: Config, environments: Environments | None, tokenizer: Any) -> MultiTurn | None:
    """Multi-turn rollouts with `env.fn`'s environments (None for single-turn runs)."""
    if environments is None:
        return None
    return MultiTurn(environments.make, tokenizer, max_turns=config.rollout.max_turns, on_error_reward=config.reward.on_error_reward,
                     stop_strings=environments.stop_strings, workers=config.env.workers)


HostWeights = dict[str, np.ndarray]  # published weights as host arrays, by leaf path (`jax.tree_util.keystr`)


def host_weights(weights: nnx.State) -> HostWeights:
    """Published weights copied to host memory, by leaf path, for a generator in another process."""
    flat = jax.tree_util.tree_flatten_with_path(weights)[0]
    values = jax.device_get([leaf for _, leaf in flat])
    return {jax.tree_util.keystr(path): np.asarray(value) for (path, _), value in zip(flat, values)}


def engine_weights(engine: Engine, abstract: nnx.State, arrays: HostWeights) -> nnx.State:
    """`arrays` (`host_weights`) as the engine's weights on the generator's shardings. Weights of another architecture
    (other leaves) or of other shapes or dtypes than the engine was built for are refused, naming the first difference."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(abstract)
    expected = [jax.tree_util.keystr(path) for path, _ in flat]
    if list(arrays) != expected:
        missing, unexpected = sorted(set(expected) - set(arrays)), sorted(set(arrays) - set(expected))
        raise ValueError(f"published weights do not fit the generator's model (model.* must match): missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]}")
    weights = jax.tree_util.tree_unflatten(treedef, list(arrays.values()))
    engine.load_params(weights)  # checks each leaf's shape and dtype against the engine's
    return engine.publish(weights)


def standalone_generation(config: Config, first_weights: Callable[[], tuple[HostWeights, int]], on_progress: Callable[[], None] = lambda: None,
                          ) -> tuple["Generation", Callable[[HostWeights], nnx.State]]:
    """The generator role built from `config` alone (a process without the learner): the task, an engine on the generator
    mesh built from the model's shapes, the reward; its first weights (`first_weights()`: host arrays and version) are
    in its mailbox. Also returns the function that makes later host weights the engine's (`engine_weights`).
    `on_progress` is called as each sample finishes (`Generation`)."""
    processes = Processes.current(config.parallel.distributed.timeout_s)
    media = media_spec(config.model)
    task = load_task(config.data, media)
    tokenizer = task.tokenizer
    model_config = config.model.with_vocab(tokenizer.vocab_size)
    graphdef, abstract = abstract_model(model_config)
    engine = generator_engine(config, model_config, tokenizer, graphdef, abstract, role_meshes(config.parallel)[1])

    def load(arrays: HostWeights) -> nnx.State:
        return engine_weights(engine, abstract, arrays)

    arrays, version = first_weights()
    weights = load(arrays)  # wrong weights fail here, before reward workers start
    reward_fn = resolve_reward_fn(config.reward.fn, config.reward)
    try:
        turns = multi_turn(config, load_environments(config.env, tokenizer, reward_fn), tokenizer)
        generation = Generation(config, task, media, processes, engine, weights, reward_fn, turns, on_progress=on_progress)
    except BaseException:
        getattr(reward_fn, "close", lambda: None)()  # its worker pool
        raise
    generation.mailbox.post(weights, version)
    return generation, load


class Generation:
    """One process's generator role: `produce(step)` draws, scores and shapes a step's batch with the weights last posted to `mailbox`.
    `on_progress()` is called as each sample finishes (rlx's engine backend, single-turn): a process that generates reports
    progress with it, so that one stuck inside a step is told apart from one that works (`services.hang_timeout_s`)."""

    def __init__(self, config: Config, task: TaskData, media: Any, processes: Processes, engine: Engine, params: nnx.State, reward_fn: RewardFn,
                 turns: MultiTurn | None, timeline: Timeline = NO_TIMELINE, on_progress: Callable[[], None] = lambda: None):
        self.config, self.task, self.processes, self.timeline = config, task, processes, timeline
        self.on_progress = on_progress
        self.prompts_per_process = processes.share(config.data.prompts_per_step, "data.prompts_per_step")
        self.reward_fn = reward_fn
        # Rewards in the worker pool start as each sample finishes, overlapping the rest of the generation.
        self.reward_pool = getattr(reward_fn, "pool", None)  # owned by the reward (`WeightedSum`), which closes it
        self._early = EarlyScores(reward_fn) if self.reward_pool is not None else None
        self.rollout = build_backend(engine, params, config.rollout, turns)
        self.partial: PartialRollouts | None = getattr(self.rollout, "partial", None)
        if self.partial is not None:
            self.partial.draw = lambda: next(self.prompts)  # partial rollouts keep slots busy with later prompts
        self.mailbox = WeightMailbox()
        if config.bus.interrupt != "off":  # weights published mid-step reach the rollouts between generate calls
            self.rollout.weight_source, self.rollout.interrupt = self.mailbox.take, config.bus.interrupt
        self.prompts = prompt_stream(config, task.tokenizer, media, processes, task.train, config.data.prompts_per_step, config.data.seed,
                                     "data.prompts_per_step")
        self._base_key = jax.random.key(config.run.seed)

    def close(self) -> None:
        """Stops the reward's worker pool and the prompt stream's loaders."""
        if self.reward_pool is not None:
            self.reward_fn.close()
        self.prompts.close()

    def produce(self, step: int) -> tuple[ScoredBatch, dict]:
        """The generator role's work for step `step`: rollouts, rewards, the algorithm's batch shaping.

        Returns the batch and its metadata: `metrics`, `data_state` (the prompt stream's
        position after this step's draws, which a checkpoint taken after step `step` resumes from) and, with partial
        rollouts, `carried` (the work they carry into the next step, `rlx.rollout.partial.Carried`: that checkpoint saves it).
        When it raises, the prompt stream is back where the step began, so a restarted step draws the same prompts.
        """
        before = self.prompts.get_state()
        try:
            return self._produce(step)
        except BaseException:
            self.prompts.set_state(before)
            raise

    def _produce(self, step: int) -> tuple[ScoredBatch, dict]:
        began = time.perf_counter()
        published = self.mailbox.take()  # a safe point: no sequence in flight
        if published is not None:
            self.rollout.update_weights(*published)
        with self.timeline.span("generator", "generate", step):
            rollout = self._generate(step)
        generated = time.perf_counter()
        with self.timeline.span("generator", "reward", step):
            responses, scores = self._score(rollout)
            rollout, responses, task_scores, rewards, metrics = self._algorithm_batch(step, rollout, responses, scores.rewards)
        scored = time.perf_counter()
        metrics.update(rollout.metrics)
        metrics.update({"reward/errors": float(scores.errors), "reward/timeouts": float(scores.timeouts), "reward/scored_early": float(scores.early),
                        "reward/scored": float(len(scores.rewards)),
                        "timing_s/gen": generated - began, "timing_s/reward": scored - generated,
                        "perf/gen_tokens_per_s": float(policy_tokens(rollout).sum()) / (generated - began)})
        meta = {"metrics": metrics, "data_state": self.prompts.get_state()}
        if self.partial is not None:
            meta["carried"] = self.partial.snapshot()
        return ScoredBatch(rollout, responses, task_scores, rewards), meta

    def _algorithm_batch(
        self, step: int, rollout: GroupRollout, responses: list[str], scores: np.ndarray,
    ) -> tuple[GroupRollout, list[str], np.ndarray, np.ndarray, dict[str, float]]:
        """DAPO: dynamic sampling (more rounds until groups with reward variance fill the batch), then overlong shaping."""
        algo, metrics = self.config.algorithm, {}
        if algo.dynamic_sampling:
            def draw(round_: int) -> ScoredRollout:
                more = self._generate(step, round_)
                texts, more_scores = self._score(more)
                return ScoredRollout(more, texts, more_scores.rewards)

            kept, metrics = fill_with_varied_groups(
                ScoredRollout(rollout, responses, scores), draw, self.config.rollout.n_samples, self.prompts_per_process, algo.max_sampling_rounds)
            rollout, responses, scores = kept.rollout, kept.responses, kept.scores
        shaping = overlong_penalty(rollout.generation.lengths, self.config.rollout.max_new_tokens, algo.overlong_buffer, algo.overlong_penalty)
        if algo.overlong_buffer:
            metrics["dapo/overlong_penalty_mean"] = float(shaping.mean())
        return rollout, responses, scores, scores + shaping, metrics

    def _score(self, rollout: GroupRollout) -> tuple[list[str], Scores]:
        """Decoded responses (whole trajectories for multi-turn rollouts) and their scores."""
        responses = self.task.tokenizer.decode_batch(rollout.generation.tokens)
        return responses, rollout_scores(rollout, responses, self.reward_fn, self.config.reward.on_error_reward, self._early)

    def _generate(self, step: int, round_: int = 0) -> GroupRollout:
        rollout_config = self.config.rollout
        # A fresh key per step (and dynamic-sampling round), derived from seed and step: never reused, and reproduced on resume.
        key = jax.random.fold_in(self._base_key, step)
        if round_:
            key = jax.random.fold_in(key, round_)
        key = self.processes.own_key(key)  # each replica samples its own prompts with its own noise
        # Partial rollouts carry samples across steps: none may hold a token staler than the bus allows at `step`.
        oldest = {"min_version": step - 1 - self.config.bus.max_staleness} if rollout_config.token_budget is not None else {}
        # rlx's driver reports each sample as it finishes (JetStream's orchestrator does not): its reward starts then.
        streamed = {"on_sample": self._sample_finished} if rollout_config.backend == "engine" else {}
        return self.rollout.generate_groups(
            next(self.prompts), rollout_config.n_samples, key, sampling_params(rollout_config), rollout_config.max_new_tokens, **oldest,
            **streamed,
        )

    def _sample_finished(self, record: PromptRecord, tokens: np.ndarray) -> None:
        self.on_progress()
        if self._early is not None:
            self._early.start(self.task.tokenizer.decode(tokens), record)
