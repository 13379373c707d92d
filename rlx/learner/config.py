"""Optimizer, supervised warm-up, critic and distillation-teacher settings."""

from __future__ import annotations

import dataclasses
from typing import Literal, get_args

from rlx.models.config import ModelConfig

Remat = Literal["none", "full", "save_dots"]  # the keys of rlx.models.qwen3.REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class LearnerConfig:
    """How the learner computes. `logprob_impl` picks the fused log-prob/entropy kernel
    (`pallas_kernels.token_logprobs_and_entropy`): `auto` is the Pallas kernels on TPU
    (`pallas`) and GPU (`pallas_gpu`) and the chunked XLA scan on CPU; `reference`
    materializes full logits (for debugging).

    `proximal`: how the pre-update (proximal) log-probs are obtained. `recompute`: a forward pass
    with the weights before the update. `approximate`: no extra pass; interpolated per token from
    the behaviour and current log-probs by policy version (`rlx/algorithms/proximal.py`, AReaL).

    `micro_batch_rows`: rows per micro-batch (over all data-parallel devices together) of the update
    (gradients accumulated over a minibatch's micro-batches: one optimizer step per minibatch, as
    without) and of every recompute pass (old, reference and teacher log-probs, critic values).
    `null`: a whole minibatch (update) or step (recompute) at once; `auto`: the largest that fits
    `parallel.device_memory_gib` (the accelerator's own limit where it reports one), by compiling.
    `remat`: per decoder layer in the update's backward pass, `none` (keep activations), `full`
    (recompute the layer) or `save_dots` (keep only matmul outputs).
    """

    logprob_impl: str = "auto"
    proximal: Literal["recompute", "approximate"] = "recompute"
    micro_batch_rows: int | Literal["auto"] | None = None
    remat: Remat = "none"

    def __post_init__(self) -> None:
        from pallas_kernels import FUSED_LOGPROB_IMPLS

        if self.logprob_impl not in FUSED_LOGPROB_IMPLS:
            raise ValueError(f"logprob_impl {self.logprob_impl!r} is not one of {', '.join(FUSED_LOGPROB_IMPLS)}")
        if self.remat not in get_args(Remat):
            raise ValueError(f"remat {self.remat!r} is not one of {', '.join(get_args(Remat))}")
        rows = self.micro_batch_rows
        if not (rows is None or rows == "auto" or (isinstance(rows, int) and rows >= 1)):
            raise ValueError(f"micro_batch_rows must be a positive integer, auto or null, got {rows!r}")


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """AdamW with linear warm-up, then constant, and global-norm clipping."""

    learning_rate: float = 1e-4
    weight_decay: float = 0.0
    b1: float = 0.9
    b2: float = 0.999
    warmup_steps: int = 0
    grad_clip: float = 1.0
    max_nonfinite_steps: int = 3  # consecutive skipped updates before the run stops

    def __post_init__(self) -> None:
        if self.learning_rate <= 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not (0 <= self.b1 < 1 and 0 <= self.b2 < 1):
            raise ValueError(f"b1 and b2 must be in [0, 1), got {self.b1}, {self.b2}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip <= 0:
            raise ValueError("warmup_steps and weight_decay must be >= 0 and grad_clip > 0")
        if self.max_nonfinite_steps < 1:
            raise ValueError(f"max_nonfinite_steps must be >= 1, got {self.max_nonfinite_steps}")


@dataclasses.dataclass(frozen=True)
class WarmupConfig:
    """Supervised steps on the train split before RL, so the policy starts with non-zero reward.

    `cache`: `none` runs the warm-up every time; `reuse` loads the weights a run with exactly this
    warm-up stored before (shipped in `rlx/warmstarts/` or under `cache_dir`), else runs it and stores
    them; `refresh` runs it and overwrites what is stored (`rlx.services.warmstart`). `cache_dir: null`
    is `~/.cache/rlx/warmstart`.
    """

    sft_steps: int = 0
    batch_size: int = 64
    learning_rate: float = 3e-3
    cache: Literal["none", "reuse", "refresh"] = "none"
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        if self.sft_steps < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("need sft_steps >= 0, batch_size >= 1 and learning_rate > 0")


@dataclasses.dataclass(frozen=True)
class CriticConfig:
    """The value model that `algorithm.adv_estimator: gae` needs.

    A separate model (policy trunk copy + scalar head, initialized from the warmed-up policy) with
    its own AdamW, not a head on the policy: the value regression then cannot pull the policy's
    features, and the policy's jitted step stays the same with or without a critic.
    """

    enabled: bool = False
    learning_rate: float = 1e-4
    cliprange_value: float = 0.5  # clip of V - V_old in the value loss

    def __post_init__(self) -> None:
        if self.learning_rate <= 0 or self.cliprange_value <= 0:
            raise ValueError(f"need learning_rate > 0 and cliprange_value > 0, got {self.learning_rate}, {self.cliprange_value}")


@dataclasses.dataclass(frozen=True)
class DistillConfig:
    """On-policy distillation (Agarwal et al. 2024; Thinking Machines 2025): a teacher scores the
    student's own samples, and each token earns r_t = -coef * (log pi_student(y_t) - log pi_teacher(y_t)),
    a one-sample estimate of the reverse KL. `coef: 0` turns it off.

    The teacher is a (larger) model trained in-process by supervised steps on the train split's
    correct answers before RL (`teacher_warmup`), so the demo needs no checkpoint download.
    """

    coef: float = 0.0
    task_reward_coef: float = 1.0  # weight of the verifier's reward; 0 = distillation alone
    teacher: ModelConfig = ModelConfig()
    teacher_warmup: WarmupConfig = WarmupConfig()

    def __post_init__(self) -> None:
        if self.coef < 0 or self.task_reward_coef < 0:
            raise ValueError(f"coef and task_reward_coef must be >= 0, got {self.coef}, {self.task_reward_coef}")
        if self.coef == 0 and self.task_reward_coef == 0:
            raise ValueError("distill.coef = 0 and distill.task_reward_coef = 0 leave no reward at all; set one > 0")
        if self.coef > 0 and self.teacher_warmup.sft_steps == 0:
            raise ValueError("distill.coef > 0 needs a trained teacher: set distill.teacher_warmup.sft_steps > 0")
