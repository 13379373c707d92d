"""Pure RL algorithm functions chosen by name: advantages, policy losses, corrections, KL, aggregation."""

from rlx.algorithms.advantages import ADVANTAGE_ESTIMATORS, AdvantageInputs, grpo_advantages
from rlx.algorithms.aggregation import LOSS_AGGREGATIONS, aggregate, masked_mean
from rlx.algorithms.config import AlgorithmConfig
from rlx.algorithms.corrections import CORRECTIONS, CorrectionInputs
from rlx.algorithms.dapo import groups_with_signal, overlong_penalty
from rlx.algorithms.kl import KL_ESTIMATORS
from rlx.algorithms.policy_losses import POLICY_LOSSES, PolicyLossInputs
from rlx.algorithms.proximal import interpolated_proximal_log_probs
from rlx.algorithms.value_loss import clipped_value_loss, explained_variance

__all__ = [
    "ADVANTAGE_ESTIMATORS", "CORRECTIONS", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "POLICY_LOSSES", "AdvantageInputs",
    "AlgorithmConfig", "CorrectionInputs", "PolicyLossInputs", "aggregate", "clipped_value_loss", "explained_variance",
    "grpo_advantages", "groups_with_signal", "interpolated_proximal_log_probs", "masked_mean", "overlong_penalty",
]
