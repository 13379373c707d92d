"""RL algorithm choices: advantage estimator, policy loss, aggregation, KL and entropy terms."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """Defaults give GRPO: group-normalized advantages, PPO-clip, token-mean aggregation."""

    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True
    policy_loss: str = "ppo_clip"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    loss_agg_mode: str = "token-mean"
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    entropy_coef: float = 0.0
    minibatches: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        # Imported here: the registries fill on import and config must name only what exists.
        from rlx.algorithms.advantages import ADVANTAGE_ESTIMATORS
        from rlx.algorithms.aggregation import LOSS_AGGREGATIONS
        from rlx.algorithms.kl import KL_ESTIMATORS
        from rlx.algorithms.policy_losses import POLICY_LOSSES

        ADVANTAGE_ESTIMATORS.get(self.adv_estimator)
        POLICY_LOSSES.get(self.policy_loss)
        KL_ESTIMATORS.get(self.kl_estimator)
        LOSS_AGGREGATIONS.get(self.loss_agg_mode)
        if self.clip_ratio_low < 0 or self.clip_ratio_high < 0:
            raise ValueError("clip_ratio_low and clip_ratio_high must be >= 0")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError("kl_coef and entropy_coef must be >= 0")
        if self.minibatches < 1 or self.epochs < 1:
            raise ValueError("minibatches and epochs must be >= 1")
