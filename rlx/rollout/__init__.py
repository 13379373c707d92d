"""Rollout: generation engines and the rollout driver. Never computes losses."""

from rlx.rollout.config import RolloutConfig
from rlx.rollout.sampler import Generation, Sampler
from rlx.rollout.sampling import sample_tokens, scaled_log_probs, top_p_keep

__all__ = ["Generation", "RolloutConfig", "Sampler", "sample_tokens", "scaled_log_probs", "top_p_keep"]
