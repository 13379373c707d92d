"""Everything one synchronous RL run holds, and the phases the loop calls."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import jax
import numpy as np
import yaml
from flax import nnx

from rlx.algorithms import overlong_penalty
from rlx.config import Config, to_dict
from rlx.data import PromptRecord, PromptStream, load_task
from rlx.learner import Checkpointer, Learner, TrainBatch, supervised_warmup
from rlx.models import Qwen3
from rlx.rewards import Scores, resolve_reward_fn, score_responses
from rlx.rollout import GroupRollout, build_backend, build_engine, sampling_params
from rlx.services.dynamic_sampling import ScoredRollout, fill_with_varied_groups
from rlx.services.evaluation import evaluate
from rlx.services.media import check_placeholder_ids, media_spec
from rlx.services.tracking import Tracker

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        self.output_dir = Path(config.run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.media = media_spec(config.model)
        self.task = load_task(config.data, self.media)
        tokenizer = self.task.tokenizer
        check_placeholder_ids(config.model, tokenizer)
        model_config = config.model.with_vocab(tokenizer.vocab_size)
        model = Qwen3(model_config, rngs=nnx.Rngs(config.run.seed))
        # On-policy distillation: the teacher is trained in `_train_teacher` before RL (fresh runs) or restored.
        teacher = Qwen3(config.distill.teacher.with_vocab(tokenizer.vocab_size), rngs=nnx.Rngs(config.run.seed + 1)) if config.distill.coef > 0 else None
        self.learner = Learner(model, config.algorithm, config.optimizer, config.rollout.temperature,
                               config.critic, config.distill, teacher, config.learner)
        engine = build_engine(self.learner.graphdef, self.learner.params, model_config, config.rollout, config.data.max_prompt_len,
                              eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, tokenizer=tokenizer)
        # Validation and training rollouts go through the same engine; weights are published after each change.
        self.rollout = build_backend(engine, self.learner.params, config.rollout)
        self.reward_fn = resolve_reward_fn(config.reward.fn)
        self.prompts = self._stream(self.task.train, config.data.prompts_per_step, config.data.seed)
        self.checkpointer = Checkpointer(self.output_dir / "checkpoints", config.run.keep_checkpoints)
        self.tracker = Tracker(self.output_dir, config.run.steps, config.run.hooks, config.run.progress)
        self._base_key = jax.random.key(config.run.seed)
        self.skipped_steps = 0

    def _stream(self, records: list[PromptRecord], batch_size: int, seed: int) -> PromptStream:
        data = self.config.data
        return PromptStream(records, self.task.tokenizer, batch_size, data.max_prompt_len, seed, self.media, data.media_workers)

    # -- start -------------------------------------------------------------------------------
    def resume_or_warm_start(self) -> int:
        """Restores the latest checkpoint (returning its step), or warms up and validates step 0."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            self._restore(latest)
            log.info("resumed from %s at step %d", self.output_dir / "checkpoints", latest)
            return latest
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        metrics = {**self._warm_up(), **self._train_teacher(), **self.evaluate(), **self.task.counts}
        self.tracker.log(0, metrics)
        self.save(0)
        return 0

    def _warm_up(self) -> dict[str, float]:
        warmup = self.config.warmup
        if warmup.sft_steps == 0:
            return {}
        began = time.perf_counter()
        stream = self._stream(self.task.demonstrations, warmup.batch_size, self.config.data.seed + 1)
        params, losses = supervised_warmup(
            self.learner.graphdef, self.learner.params, stream, self.task.tokenizer, warmup, self.config.rollout.max_new_tokens,
            self.config.learner.logprob_impl)
        self.learner.reset_weights(params)
        self.rollout.update_weights(self.learner.params, version=0)
        return {"warmup/sft_loss_first": losses[0], "warmup/sft_loss_last": losses[-1], "timing_s/warmup": time.perf_counter() - began}

    def _train_teacher(self) -> dict[str, float]:
        """Supervised steps for the distillation teacher on the train split's correct answers."""
        if self.learner.teacher_params is None:
            return {}
        warmup, began = self.config.distill.teacher_warmup, time.perf_counter()
        stream = self._stream(self.task.train, warmup.batch_size, self.config.data.seed + 2)
        params, losses = supervised_warmup(
            self.learner.teacher_graphdef, self.learner.teacher_params, stream, self.task.tokenizer, warmup, self.config.rollout.max_new_tokens)
        self.learner.set_teacher_params(params)
        return {"distill/teacher_sft_loss_last": losses[-1], "timing_s/teacher_warmup": time.perf_counter() - began}

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
                ScoredRollout(rollout, responses, scores), draw, self.config.rollout.n_samples, self.config.data.prompts_per_step, algo.max_sampling_rounds)
            rollout, responses, scores = kept.rollout, kept.responses, kept.scores
        shaping = overlong_penalty(rollout.generation.lengths, self.config.rollout.max_new_tokens, algo.overlong_buffer, algo.overlong_penalty)
        if algo.overlong_buffer:
            metrics["dapo/overlong_penalty_mean"] = float(shaping.mean())
        return rollout, responses, scores, scores + shaping, metrics

    # -- one RL step ---------------------------------------------------------------------------
    def rl_step(self, step: int) -> dict[str, float]:
        began = time.perf_counter()
        rollout = self._generate(step)
        generated = time.perf_counter()
        responses, scores = self._score(rollout)
        rollout, responses, task_scores, rewards, algorithm_metrics = self._algorithm_batch(step, rollout, responses, scores.rewards)
        scored = time.perf_counter()
        metrics = self.learner.update(self._train_batch(rollout, rewards))
        if self.config.algorithm.ref_update_every and step % self.config.algorithm.ref_update_every == 0:
            self.learner.refresh_reference()
        self.rollout.update_weights(self.learner.params, version=step)
        updated = time.perf_counter()
        self._save_rollouts(step, rollout, responses, rewards)
        tokens = float(rollout.generation.mask.sum())
        metrics.update(rollout.metrics)
        metrics.update(algorithm_metrics)
        metrics.update({
            "reward/mean": float(rewards.mean()),
            "reward/errors": float(scores.errors),
            "critic/score/mean": float(task_scores.mean()),
            "response_length/mean": float(rollout.generation.lengths.mean()),
            "response_length/clip_ratio": float(np.mean((rollout.generation.mask[:, -1] > 0) & (rollout.generation.tokens[:, -1] != self.task.tokenizer.eos_id))),
            "timing_s/gen": generated - began,
            "timing_s/reward": scored - generated,
            "timing_s/update": updated - scored,
            "timing_s/step": updated - began,
            "perf/tokens_per_s": tokens / (updated - began),
            "perf/gen_tokens_per_s": tokens / (generated - began),
        })
        return metrics

    def _score(self, rollout: GroupRollout) -> tuple[list[str], Scores]:
        """Decoded responses and their verifier scores."""
        responses = self.task.tokenizer.decode_batch(rollout.generation.tokens)
        return responses, score_responses(self.reward_fn, responses, rollout.records, self.config.reward.on_error_reward)

    def _generate(self, step: int, round_: int = 0) -> GroupRollout:
        rollout_config = self.config.rollout
        # A fresh key per step (and dynamic-sampling round), derived from seed and step: never reused, and reproduced on resume.
        key = jax.random.fold_in(self._base_key, step)
        if round_:
            key = jax.random.fold_in(key, round_)
        return self.rollout.generate_groups(
            next(self.prompts), rollout_config.n_samples, key, sampling_params(rollout_config), rollout_config.max_new_tokens,
        )

    @staticmethod
    def _train_batch(rollout: GroupRollout, rewards: np.ndarray) -> TrainBatch:
        generation = rollout.generation
        return TrainBatch(
            tokens=np.concatenate([rollout.prompt_tokens, generation.tokens], axis=1),
            start=rollout.start,
            mask=generation.mask,
            rewards=rewards,
            group_ids=rollout.group_ids,
            behaviour_log_probs=generation.log_probs,
            media=rollout.media,
        )

    def _save_rollouts(self, step: int, rollout: GroupRollout, responses: list[str], rewards: np.ndarray) -> None:
        if not self.config.run.save_rollouts:
            return
        with (self.output_dir / "rollouts.jsonl").open("a") as handle:
            for record, response, reward in zip(rollout.records, responses, rewards):
                handle.write(json.dumps({"step": step, "prompt_id": record.id, "prompt": record.prompt, "response": response, "reward": float(reward)}) + "\n")

    # -- validation and checkpoints ----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        return evaluate(self.rollout, self.task.val, self.task.tokenizer, self.reward_fn, self.config.data.max_prompt_len, self.config.rollout.max_new_tokens,
                        self.media)

    def save(self, step: int) -> None:
        meta = {"step": step, "seed": self.config.run.seed, "data_state": self.prompts.get_state()}
        self.checkpointer.save(step, self.learner.state_dict(), meta)

    def _restore(self, step: int) -> None:
        trees, meta = self.checkpointer.restore(step, self.learner.state_dict())
        if meta["seed"] != self.config.run.seed:
            raise ValueError(
                f"{self.output_dir} holds a run with run.seed={meta['seed']}, but run.seed={self.config.run.seed}; "
                "use the same seed to resume, or a new run.output_dir"
            )
        self.learner.load_state_dict(trees)
        self.rollout.update_weights(self.learner.params, version=step)
        self.prompts.set_state(meta["data_state"])

    def close(self) -> Path:
        self.prompts.close()
        self.checkpointer.wait()
        self.checkpointer.close()
        return self.tracker.close()
