"""Rollout: the JetStream-API engine, the continuous-batching RL driver and its backends. Never computes losses."""

from rlx.rollout.backends import ROLLOUT_BACKENDS, RolloutBackend, build_backend, build_engine, sampling_params
from rlx.rollout.config import RolloutConfig
from rlx.rollout.driver import Completion, Generation, GroupRollout, Request, RolloutDriver
from rlx.rollout.engine import Engine
from rlx.rollout.sampling import SamplingParams, sample_tokens, scaled_log_probs, token_log_probs
from rlx.rollout.state import DecodeState, Prefix, ResultTokens, check_same_structure
from rlx.rollout.turns import MultiTurn

__all__ = [
    "ROLLOUT_BACKENDS", "Completion", "DecodeState", "Engine", "Generation", "GroupRollout", "MultiTurn", "Prefix", "Request",
    "ResultTokens", "RolloutBackend", "RolloutConfig", "RolloutDriver", "SamplingParams", "build_backend",
    "build_engine", "check_same_structure", "sample_tokens", "sampling_params", "scaled_log_probs", "token_log_probs",
]
