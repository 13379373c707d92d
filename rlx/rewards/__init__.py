"""Rewards: verifiers and scoring. Never touches the optimizer."""

from rlx.rewards.config import RewardConfig
from rlx.rewards.scoring import EarlyScores, Scores, score_responses
from rlx.rewards.verifiers import RewardFn, register_verifier, register_verifier_factory, resolve_reward_fn

__all__ = ["EarlyScores", "RewardConfig", "RewardFn", "Scores", "register_verifier", "register_verifier_factory", "resolve_reward_fn", "score_responses"]
