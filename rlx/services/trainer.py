"""Everything one RL run holds, and the phases the loop calls.

The generator role calls `produce` (rollout, reward, the algorithm's batch shaping); the
learner role calls `learn` (update, then publish the new weights onto the generator's slice).
`rl_step` runs both in turn: the synchronous step without the bus.

In a multi-process run (`rlx.parallel.processes`) each process generates its share of every
step's prompt groups with its own generator replica and feeds them as its rows of the one
learner batch; validation splits the val records the same way; process 0 writes the outputs.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path
from typing import Sequence

import jax
import numpy as np
import yaml
from flax import nnx

from rlx.bus import version_lag
from rlx.config import Config, to_dict
from rlx.errors import UserError
from rlx.data import PromptRecord, PromptStream, load_task
from rlx.envs import load_environments
from rlx.learner import Checkpointer, Learner, TrainBatch, supervised_warmup
from rlx.models import create_params
from rlx.parallel import role_meshes, rules_for, tree_shardings
from rlx.parallel.processes import Processes, check_rows_by_process, local_copy
from rlx.plugins import load_object
from rlx.rewards import resolve_reward_fn
from rlx.rollout import GroupRollout, MultiTurn, build_backend, sampling_params
from rlx.rollout.partial import Carried
from rlx.services.bus_checkpoint import DrawnBatch, admissible, load_carried, load_drawn_ahead, save_drawn_ahead
from rlx.services.evaluation import evaluate, policy_tokens, sampled_evaluation
from rlx.services.media import check_placeholder_ids, media_spec
from rlx.services.preflight import check_task
from rlx.services.resume import (check_fingerprint, check_latest_fingerprint, drop_rows_after, fingerprint, record_config_changes,
                                 restore_intact, saved_fingerprint)
from rlx.services.generation import Generation, generator_engine, multi_turn, prompt_stream
from rlx.services.loggers import json_line
from rlx.services.timeline import Timeline
from rlx.services.tracking import Tracker
from rlx.services.warmstart import warm_start
from rlx.services.transfer import ScoredBatch

log = logging.getLogger(__name__)
BUS_CHECKPOINTS = "checkpoints_bus"  # beside `checkpoints/`: one file per checkpoint step (`rlx.services.bus_checkpoint`)


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        self.processes = processes = Processes.current(config.parallel.distributed.timeout_s)
        self.output_dir = Path(config.run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.media = media_spec(config.model)
        self.task = load_task(config.data, self.media)
        tokenizer = self.task.tokenizer
        check_placeholder_ids(config.model, tokenizer)
        model_config = config.model.with_vocab(tokenizer.vocab_size)
        check_task(config, self.task, model_config)  # batch sizes against record counts, weights against device memory
        self._fingerprint = fingerprint(config, tokenizer.vocabulary)
        self.checkpointer = Checkpointer(self.output_dir / "checkpoints", config.run.keep_checkpoints)
        check_latest_fingerprint(self.checkpointer, self._fingerprint, config)  # a refused resume fails before the model is built
        # Placement: the learner's weights live on its slice, the generator's copy on its own
        # (the same devices when colocated); every publish is a versioned reshard between them.
        learner_mesh, generator_mesh = role_meshes(config.parallel)
        learner_rules = rules_for(config.parallel.learner_rules)
        on_learner = lambda abstract: tree_shardings(abstract, learner_mesh, learner_rules)
        # Created (random, or loaded from model.init_from) straight onto the learner's shardings, never whole on one device.
        model = create_params(model_config, on_learner, config.run.seed)
        # On-policy distillation: the teacher is trained in `_train_teacher` before RL (fresh runs) or restored.
        teacher = create_params(config.distill.teacher.with_vocab(tokenizer.vocab_size), on_learner, config.run.seed + 1) if config.distill.coef > 0 else None
        self.learner = Learner(*model, config.algorithm, config.optimizer, config.rollout.temperature, config.critic, config.distill, teacher,
                               config.learner, mesh=learner_mesh, rules=learner_rules, device_memory_gib=config.parallel.device_memory_gib)
        if processes.count > 1:
            check_rows_by_process(self.learner.layout.rows, processes.count)
        # Each process's generator replica samples with the whole weights, gathered onto its own devices.
        engine = generator_engine(config, model_config, tokenizer, self.learner.graphdef, local_copy(self.learner.params), generator_mesh)
        # Cast to the compute dtype, then onto the generator's shardings.
        self._publish_weights = lambda params: engine.publish(local_copy(params))
        published = engine.load_params()
        self.reward_fn = resolve_reward_fn(config.reward.fn, config.reward)
        turns = self._multi_turn(tokenizer)
        self.timeline = Timeline(self.output_dir / "trace.json" if config.run.trace and processes.primary else None)
        # Training rollouts (the generator role) and validation (the learner's latest weights) share the engine.
        self.generation = Generation(config, self.task, self.media, processes, engine, published, self.reward_fn, turns, self.timeline)
        self.rollout, self.prompts, self.mailbox = self.generation.rollout, self.generation.prompts, self.generation.mailbox
        self.mailbox.post(published, 0)  # what the generator starts from, also for a generator in another process
        # Validation answers every prompt it is given: never a token budget that carries samples over.
        self.validator = build_backend(engine, published, dataclasses.replace(config.rollout, token_budget=None), turns)
        self.published_version = 0
        if len(self.task.val) < processes.count:
            raise UserError(f"{len(self.task.val)} validation records cannot give each of {processes.count} processes some; use more")
        self.tracker = Tracker(self.output_dir, config.run, to_dict(config), processes)
        self._base_key = jax.random.key(config.run.seed)
        self._resume_metrics: dict[str, float] = {}
        self._last_step_end: float | None = None
        self.drawn_ahead: list[DrawnBatch] = []  # sealed, untrained batches a checkpoint held (`rlx.services.bus_checkpoint`)
        self.carried: Carried | None = None  # partial rollouts' work a checkpoint held, after its drawn-ahead batches

    def _multi_turn(self, tokenizer) -> MultiTurn | None:
        """Multi-turn rollouts with `env.fn` (None without); an `env.demonstrations` builder replaces the task's warm-up data."""
        config = self.config
        environments = load_environments(config.env, tokenizer, self.reward_fn)
        if environments is not None and config.env.demonstrations is not None:
            build = load_object(config.env.demonstrations)
            self.task = dataclasses.replace(self.task, demonstrations=build(self.task.train, environments.context, config.data.seed + 1))
        return multi_turn(config, environments, tokenizer)

    def _stream(self, records: list[PromptRecord], batch_size: int, seed: int, what: str) -> PromptStream:
        return prompt_stream(self.config, self.task.tokenizer, self.media, self.processes, records, batch_size, seed, what)

    # -- start -------------------------------------------------------------------------------
    def resume_or_warm_start(self) -> int:
        """Restores the latest checkpoint (returning its step), or warms up and validates step 0."""
        if self.checkpointer.latest_step() is not None:
            latest = self._resume()
            log.info("resumed from %s at step %d", self.output_dir / "checkpoints", latest)
            self._last_step_end = time.perf_counter()
            return latest
        if self.processes.primary:
            (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        metrics = {**self._warm_up(), **self._train_teacher(), **self.evaluate(), **self.task.counts}
        self.save(0)  # before the metrics row: a crash in between must not make the rerun log step 0 twice
        self.tracker.log(0, metrics)
        self._last_step_end = time.perf_counter()
        return 0

    def _warm_up(self) -> dict[str, float]:
        warmup = self.config.warmup
        if warmup.sft_steps == 0:
            return {}
        began = time.perf_counter()

        def train() -> tuple[nnx.State, list[float]]:
            stream = self._stream(self.task.demonstrations, warmup.batch_size, self.config.data.seed + 1, "warmup.batch_size")
            return supervised_warmup(
                self.learner.graphdef, self.learner.params, stream, self.task.tokenizer, warmup, self.config.rollout.max_new_tokens,
                self.config.learner.logprob_impl, self.learner.layout)

        started = warm_start(self.config, self.learner.params, self.task.demonstrations, self.task.tokenizer, train, self.processes)
        self.learner.reset_weights(started.params)
        self.publish(version=0)
        losses = started.losses
        return {"warmup/sft_loss_first": losses[0], "warmup/sft_loss_last": losses[-1], "timing_s/warmup": time.perf_counter() - began,
                "warmup/reused": float(started.source != "trained")}

    def _train_teacher(self) -> dict[str, float]:
        """Supervised steps for the distillation teacher on the train split's correct answers."""
        if self.learner.teacher_params is None:
            return {}
        warmup, began = self.config.distill.teacher_warmup, time.perf_counter()
        stream = self._stream(self.task.train, warmup.batch_size, self.config.data.seed + 2, "distill.teacher_warmup.batch_size")
        params, losses = supervised_warmup(
            self.learner.teacher_graphdef, self.learner.teacher_params, stream, self.task.tokenizer, warmup, self.config.rollout.max_new_tokens,
            layout=self.learner.layout)
        self.learner.set_teacher_params(params)
        return {"distill/teacher_sft_loss_last": losses[-1], "timing_s/teacher_warmup": time.perf_counter() - began}

    # -- one RL step ---------------------------------------------------------------------------
    def rl_step(self, step: int) -> dict[str, float]:
        """The synchronous step: rollouts with the current weights, then the update."""
        batch, meta = self.produce(step)
        return {**meta["metrics"], **self.learn(step, batch)}

    def produce(self, step: int) -> tuple[ScoredBatch, dict]:
        """The generator role's work for step `step` (`Generation.produce`)."""
        return self.generation.produce(step)

    def learn(self, step: int, batch: ScoredBatch) -> dict[str, float]:
        """The learner role's work for step `step`: one update on `batch`, then publish version `step`."""
        began = time.perf_counter()
        rollout, rewards = batch.rollout, batch.rewards
        self.processes.check_same(f"the number of rollouts of step {step}", len(rewards))  # shapes of one SPMD program
        with self.timeline.span("learner", "learn", step):
            metrics = self.learner.update(self._train_batch(step, rollout, rewards))
            if self.config.algorithm.ref_update_every and step % self.config.algorithm.ref_update_every == 0:
                self.learner.refresh_reference()
        updated = time.perf_counter()
        with self.timeline.span("learner", "publish", step):
            self.publish(version=step)
        published = time.perf_counter()
        # Wall time of the step as the run sees it: since the previous step ended (rollouts and waits included).
        wall = published - (self._last_step_end or began)
        self._last_step_end = published
        self._save_rollouts(step, rollout, batch.responses, rewards)
        tokens = float(rollout.generation.mask.sum())
        metrics.update(self._resume_metrics)
        self._resume_metrics = {}
        metrics.update({
            "reward/mean": float(rewards.mean()),
            "critic/score/mean": float(batch.task_scores.mean()),
            "response_length/mean": float(policy_tokens(rollout).mean()),
            "response_length/clip_ratio": float(np.mean(rollout.generation.clipped(self.task.tokenizer.stop_ids))),
            "timing_s/update": updated - began,
            "timing_s/weight_sync": published - updated,
            "timing_s/step": wall,
            "perf/tokens_per_s": tokens / wall,
        })
        return metrics

    def publish(self, version: int) -> None:
        """Copies the learner's weights onto the generator's shardings: validation uses them at once,
        the generator role at its next safe point (`mailbox`)."""
        weights = jax.block_until_ready(self._publish_weights(self.learner.params))
        self.validator.update_weights(weights, version)
        self.mailbox.post(weights, version)
        self.published_version = version

    def _train_batch(self, step: int, rollout: GroupRollout, rewards: np.ndarray) -> TrainBatch:
        """This process's rows; group ids offset by the rows of the processes before it, unique in the global batch."""
        generation = rollout.generation
        lag, real = version_lag(rollout.policy_version, step)
        staleness = np.where(real, lag, 0).astype(np.float32)  # padding gets 0
        return TrainBatch(
            tokens=np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1),
            start=rollout.start,
            mask=generation.mask,
            rewards=rewards,
            group_ids=rollout.group_ids + self.processes.index * len(rewards),
            behaviour_log_probs=generation.log_probs,
            media=rollout.media,
            staleness=staleness,
            routes=rollout.routes,
        )

    def _save_rollouts(self, step: int, rollout: GroupRollout, responses: list[str], rewards: np.ndarray) -> None:
        if not self.config.run.save_rollouts:
            return
        rows = [{"step": step, "prompt_id": record.id, "prompt": record.prompt, "response": response, "reward": float(reward)}
                for record, response, reward in zip(rollout.records, responses, rewards)]
        every = [row for rows_of_process in self.processes.allgather(rows) for row in rows_of_process]
        if not self.processes.primary:
            return
        with (self.output_dir / "rollouts.jsonl").open("a") as handle:
            for row in every:
                handle.write(json_line(row))

    # -- validation and checkpoints ----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        """Greedy `val/accuracy`; with `run.eval_samples: K`, also `val/pass@k` and `val/avg@K`. Each process
        evaluates its part of the val records; the metrics cover them all."""
        records = self.processes.part(self.task.val)
        metrics = evaluate(self.validator, records, self.task.tokenizer, self.reward_fn, self.config.data.max_prompt_len,
                           self.config.rollout.max_new_tokens, self.media, self.processes.gather_rows)
        if self.config.run.eval_samples:
            sampled = self.sampled_evaluation(records, self.config.run.eval_samples)
            metrics.update({f"val/{name}": value for name, value in sampled.items() if name.startswith(("pass@", "avg@"))})
        return metrics

    def sampled_evaluation(self, records: list[PromptRecord], samples: int) -> dict[str, float]:
        """pass@k, avg@`samples` and response length of `records`, `samples` responses each at the rollout's sampling
        settings, with the latest published weights. The same key every call, so evaluations compare like with like.
        In a multi-process run `records` is this process's part, and the metrics cover every process's."""
        rollout, key = self.config.rollout, self.processes.own_key(jax.random.split(self._base_key)[1])
        return sampled_evaluation(self.validator, records, self.task.tokenizer, self.reward_fn, self.config.data.max_prompt_len,
                                  rollout.max_new_tokens, sampling_params(rollout), samples, key, self.media, self.processes.gather_rows)

    def save(self, step: int, data_state: dict | None = None, bus_groups: int = 0, drawn_ahead: Sequence[DrawnBatch] = (),
             carried: Carried | None = None) -> None:
        """`data_state`: the prompt stream's position after step `step`'s draws (default: now). `drawn_ahead`:
        batches sealed on the bus and not trained yet, and `carried`, the work partial rollouts carried after the last
        of them (unfinished prompt groups with their finished samples, samples in decode slots with their tokens so
        far), are saved beside the learner state (single-process runs; with several processes the batches are drawn
        again, counted, and the carried groups lost: `rollout/carried_lost_on_resume`). `bus_groups` rollouts of a
        step still being drawn are not saved: a resumed run draws them again, counted in `bus/regenerated_on_resume`.
        Every process saves (orbax writes the shards collectively); the metadata holds each process's stream position
        and the counts of all."""
        carried_groups = len(carried.groups) if carried is not None else 0
        if self.processes.count > 1:
            bus_groups, drawn_ahead, carried = bus_groups + sum(len(batch.groups) for batch in drawn_ahead), (), None
        else:  # before the learner state: a checkpoint that exists has its bus file
            save_drawn_ahead(self.output_dir / BUS_CHECKPOINTS, step, list(drawn_ahead), keep=set(self.checkpointer.all_steps()), carried=carried)
        local = {"data_state": data_state or self.prompts.get_state(), "bus_groups": bus_groups, "carried_groups": carried_groups}
        every = self.processes.allgather(local)
        meta = {"step": step, "seed": self.config.run.seed, "data_state": every[0]["data_state"],
                "bus_groups": sum(p["bus_groups"] for p in every), "carried_groups": sum(p["carried_groups"] for p in every),
                "fingerprint": self._fingerprint}
        if self.processes.count > 1:
            meta["data_state_by_process"] = [p["data_state"] for p in every]
        self.checkpointer.save(step, self.learner.state_dict(), meta)

    def restore(self, step: int) -> None:
        """Loads checkpoint `step` (as a resumed run would) and publishes its weights."""
        self._restore(step)

    def _resume(self) -> int:
        """Restores the latest intact checkpoint whose fingerprint matches this run (`rlx.services.resume`); returns its step."""
        directory = self.output_dir / "checkpoints"

        def restore(step: int) -> dict:
            meta = self.checkpointer.restore_meta(step)
            allowed = check_fingerprint(saved_fingerprint(meta), self._fingerprint, self.config, directory)
            self._restore(step)
            return allowed

        step, allowed = restore_intact(self.checkpointer, directory, restore)
        if self.processes.primary:
            record_config_changes(self.output_dir, self.config, step, allowed)
            drop_rows_after(self.output_dir / "metrics.jsonl", step)
            drop_rows_after(self.output_dir / "rollouts.jsonl", max([step] + [batch.step for batch in self.drawn_ahead]))
        return step

    def _restore(self, step: int) -> None:
        trees, meta = self.checkpointer.restore(step, self.learner.state_dict())
        self.learner.load_state_dict(trees)
        self.publish(version=step)
        self.prompts.set_state(self._data_state(meta))
        directory, records = self.output_dir / BUS_CHECKPOINTS, {r.id: r for r in self.task.train}
        saved = load_drawn_ahead(directory, step, records) if self.processes.count == 1 else None
        bus = self.config.bus
        self.drawn_ahead = admissible(saved or [], step, bus.max_staleness, bus.groups_held(self.config.data.prompts_per_step))
        if self.drawn_ahead:
            self.prompts.set_state(self.drawn_ahead[-1].meta["data_state"])  # after the last batch restored
        restored = sum(len(batch.groups) for batch in self.drawn_ahead)
        dropped = sum(len(batch.groups) for batch in saved or []) - restored
        # The carried work follows the last batch saved: with some of them dropped, it would skip theirs.
        usable = saved is not None and not dropped and self.generation.partial is not None
        self.carried = load_carried(directory, step, records) if usable else None
        if self.carried is not None:
            self.generation.partial.resume(self.carried)  # before the generator's first step
        groups, in_flight = (len(self.carried.groups), len(self.carried.in_flight)) if self.carried is not None else (0, 0)
        self._resume_metrics = {"bus/regenerated_on_resume": float(meta.get("bus_groups", 0) + dropped), "bus/restored_on_resume": float(restored),
                                "rollout/carried_restored_on_resume": float(groups), "rollout/in_flight_restored_on_resume": float(in_flight),
                                "rollout/carried_lost_on_resume": float(meta.get("carried_groups", 0) - groups)}

    def _data_state(self, meta: dict) -> dict:
        """This process's prompt-stream position in checkpoint metadata `meta`."""
        states = meta.get("data_state_by_process", [meta["data_state"]])
        if len(states) == self.processes.count:
            return states[self.processes.index]
        if all(state == states[0] for state in states):
            return states[0]  # every stream at one position of the shared prompt order: any process count resumes it
        raise UserError(f"{self.output_dir}: checkpoint written by {len(states)} processes whose prompt streams stand at different "
                         f"positions (dynamic sampling draws per process); resume it with {len(states)} processes")

    def close(self) -> Path:
        self.generation.close()
        self.checkpointer.wait()
        self.checkpointer.close()
        self.timeline.close()
        return self.tracker.close()
