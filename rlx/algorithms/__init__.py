"""Pure RL algorithm functions chosen by name: advantages, policy losses, KL, aggregation."""

from rlx.algorithms.advantages import ADVANTAGE_ESTIMATORS, grpo_advantages
from rlx.algorithms.aggregation import LOSS_AGGREGATIONS, aggregate, masked_mean
from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.kl import KL_ESTIMATORS
from rlx.algorithms.policy_losses import POLICY_LOSSES, PolicyLossInputs

__all__ = [
    "ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "POLICY_LOSSES", "AlgorithmConfig",
    "PolicyLossInputs", "aggregate", "grpo_advantages", "masked_mean",
]
