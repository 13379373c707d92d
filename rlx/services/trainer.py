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

from rlx.config import Config, to_dict
from rlx.data import PromptStream, load_task
from rlx.learner import Checkpointer, Learner, TrainBatch, supervised_warmup
from rlx.models import Qwen3
from rlx.rewards import resolve_reward_fn, score_responses
from rlx.rollout import Sampler
from rlx.rollout.driver import GroupRollout, generate_groups
from rlx.services.evaluation import evaluate
from rlx.services.tracking import Tracker

log = logging.getLogger(__name__)


class Trainer:
    def __init__(self, config: Config):
        self.config = config
        self.output_dir = Path(config.run.output_dir)
        self.output_dir.mkdir(parents=True, exist_ok=True)
        self.task = load_task(config.data)
        tokenizer = self.task.tokenizer
        model_config = config.model.with_vocab(tokenizer.vocab_size)
        model = Qwen3(model_config, rngs=nnx.Rngs(config.run.seed))
        self.learner = Learner(model, config.algorithm, config.optimizer, config.rollout.temperature)
        self.sampler = Sampler(self.learner.graphdef, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, max_new_tokens=config.rollout.max_new_tokens)
        self.reward_fn = resolve_reward_fn(config.reward.fn)
        self.prompts = PromptStream(self.task.train, tokenizer, config.data.prompts_per_step, config.data.max_prompt_len, config.data.seed)
        self.checkpointer = Checkpointer(self.output_dir / "checkpoints", config.run.keep_checkpoints)
        self.tracker = Tracker(self.output_dir, config.run.steps, config.run.hooks, config.run.progress)
        self._base_key = jax.random.key(config.run.seed)
        self.skipped_steps = 0

    # -- start -------------------------------------------------------------------------------
    def resume_or_warm_start(self) -> int:
        """Restores the latest checkpoint (returning its step), or warms up and validates step 0."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            self._restore(latest)
            log.info("resumed from %s at step %d", self.output_dir / "checkpoints", latest)
            return latest
        (self.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(self.config), sort_keys=False))
        metrics = {**self._warm_up(), **self.evaluate(), **self.task.counts}
        self.tracker.log(0, metrics)
        self.save(0)
        return 0

    def _warm_up(self) -> dict[str, float]:
        warmup = self.config.warmup
        if warmup.sft_steps == 0:
            return {}
        began = time.perf_counter()
        stream = PromptStream(self.task.demonstrations, self.task.tokenizer, warmup.batch_size, self.config.data.max_prompt_len, self.config.data.seed + 1)
        params, losses = supervised_warmup(self.learner.graphdef, self.learner.params, stream, self.task.tokenizer, warmup, self.config.rollout.max_new_tokens)
        self.learner.reset_weights(params)
        return {"warmup/sft_loss_first": losses[0], "warmup/sft_loss_last": losses[-1], "timing_s/warmup": time.perf_counter() - began}

    # -- one RL step ---------------------------------------------------------------------------
    def rl_step(self, step: int) -> dict[str, float]:
        began = time.perf_counter()
        rollout = self._generate(step)
        generated = time.perf_counter()
        responses = self.task.tokenizer.decode_batch(rollout.generation.tokens)
        scores = score_responses(self.reward_fn, responses, rollout.records, self.config.reward.on_error_reward)
        scored = time.perf_counter()
        metrics = self.learner.update(self._train_batch(rollout, scores.rewards))
        updated = time.perf_counter()
        self._save_rollouts(step, rollout, responses, scores.rewards)
        tokens = float(rollout.generation.mask.sum())
        metrics.update({
            "reward/mean": float(scores.rewards.mean()),
            "reward/errors": float(scores.errors),
            "critic/score/mean": float(scores.rewards.mean()),
            "response_length/mean": float(rollout.generation.lengths.mean()),
            "response_length/clip_ratio": float(np.mean(rollout.generation.tokens[:, -1] != self.task.tokenizer.eos_id) * np.mean(rollout.generation.mask[:, -1])),
            "timing_s/gen": generated - began,
            "timing_s/reward": scored - generated,
            "timing_s/update": updated - scored,
            "timing_s/step": updated - began,
            "perf/tokens_per_s": tokens / (updated - began),
            "perf/gen_tokens_per_s": tokens / (generated - began),
            "actor/skipped_nonfinite_steps": float(self.learner.consecutive_nonfinite),
        })
        return metrics

    def _generate(self, step: int) -> GroupRollout:
        rollout_config = self.config.rollout
        # A fresh key per step, derived from seed and step: never reused, and reproduced on resume.
        key = jax.random.fold_in(self._base_key, step)
        return generate_groups(
            self.sampler, self.learner.params, next(self.prompts), rollout_config.n_samples, key,
            rollout_config.temperature, rollout_config.top_p, policy_version=step - 1,
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
        )

    def _save_rollouts(self, step: int, rollout: GroupRollout, responses: list[str], rewards: np.ndarray) -> None:
        if not self.config.run.save_rollouts:
            return
        with (self.output_dir / "rollouts.jsonl").open("a") as handle:
            for record, response, reward in zip(rollout.records, responses, rewards):
                handle.write(json.dumps({"step": step, "prompt_id": record.id, "prompt": record.prompt, "response": response, "reward": float(reward)}) + "\n")

    # -- validation and checkpoints ----------------------------------------------------------
    def evaluate(self) -> dict[str, float]:
        batch = self.config.data.prompts_per_step * self.config.rollout.n_samples
        return evaluate(self.sampler, self.learner.params, self.task.val, self.task.tokenizer, self.reward_fn, self.config.data.max_prompt_len, batch)

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
        self.prompts.set_state(meta["data_state"])

    def close(self) -> Path:
        self.checkpointer.wait()
        self.checkpointer.close()
        return self.tracker.close()
