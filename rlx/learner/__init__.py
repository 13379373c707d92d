"""Learner: train step, optimizer, checkpoints. Never samples tokens."""

from rlx.learner.checkpoint import Checkpointer
from rlx.learner.config import LearnerConfig, OptimizerConfig, WarmupConfig
from rlx.learner.sft import encode_answers, supervised_warmup
from rlx.learner.objective import TrainBatch
from rlx.learner.train_step import Learner, NonFiniteLossError

__all__ = [
    "Checkpointer", "Learner", "LearnerConfig", "NonFiniteLossError", "OptimizerConfig", "TrainBatch", "WarmupConfig",
    "encode_answers", "supervised_warmup",
]
