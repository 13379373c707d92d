"""RL algorithm choices: advantage estimator, policy loss, correction, aggregation, KL, entropy, DAPO."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal


@dataclasses.dataclass(frozen=True)
class AlgorithmConfig:
    """Defaults give GRPO: group-normalized advantages, PPO-clip, token-mean aggregation.

    Each field is read by the function its group names (see the registries in this package).

    `routing_replay` (mixture-of-experts models; rollout routing replay, R3): `off`; `record`: the
    generator records the experts each token went to and the learner reports how often its own
    router agrees (`moe/route_agreement`) without replaying them; `replay`: every learner forward
    (old, reference and current log-probs) uses the recorded experts, with gate weights recomputed
    from the learner's router at those experts so the router still learns.
    """

    # advantages (rlx/algorithms/advantages.py)
    adv_estimator: str = "grpo"
    norm_adv_by_std: bool = True  # false: Dr. GRPO
    gamma: float = 1.0  # discount of token-level rewards (reinforce_plus_plus, gae, token rewards)
    lam: float = 1.0  # GAE lambda
    # policy loss (rlx/algorithms/policy_losses.py)
    policy_loss: str = "ppo_clip"
    clip_ratio_low: float = 0.2
    clip_ratio_high: float = 0.2
    clip_ratio_c: float = math.inf  # dual-clip bound for negative advantages (Ye et al. 2020); inf = off
    behaviour_weight_cap: float = math.inf  # decoupled_ppo: cap of pi_prox / pi_behav; inf = uncapped
    loss_agg_mode: str = "token-mean"
    # rollout/train mismatch correction (rlx/algorithms/corrections.py)
    correction: str = "none"
    correction_level: Literal["token", "sequence"] = "token"  # tis only
    tis_cap: float = 2.0  # TIS truncation C
    correction_low: float = 0.5  # icepop / geo_mask band [low, high] on pi_train / pi_rollout
    correction_high: float = 2.0
    # KL to the reference policy (rlx/algorithms/kl.py)
    kl_coef: float = 0.0
    kl_estimator: str = "k3"
    kl_penalty: Literal["loss", "reward"] = "loss"  # a loss term, or a per-token reward penalty
    ref_update_every: int = 0  # refresh the reference to the current weights every N steps; 0 = frozen
    entropy_coef: float = 0.0
    # DAPO (rlx/algorithms/dapo.py)
    dynamic_sampling: bool = False  # drop zero-variance groups, sample more to fill the batch
    max_sampling_rounds: int = 3  # generation rounds per step before filling with dropped groups
    overlong_buffer: int = 0  # last L_cache tokens of the budget where the length penalty ramps; 0 = off
    overlong_penalty: float = 1.0
    # MoE rollout routing replay (rlx/models/moe.py, rlx/learner/logprobs.py)
    routing_replay: Literal["off", "record", "replay"] = "off"
    # updates
    minibatches: int = 1
    epochs: int = 1

    def __post_init__(self) -> None:
        # Imported here: the registries fill on import and config must name only what exists.
        from rlx.algorithms.advantages import ADVANTAGE_ESTIMATORS
        from rlx.algorithms.aggregation import LOSS_AGGREGATIONS
        from rlx.algorithms.corrections import CORRECTIONS
        from rlx.algorithms.kl import KL_ESTIMATORS
        from rlx.algorithms.policy_losses import POLICY_LOSSES

        ADVANTAGE_ESTIMATORS.get(self.adv_estimator)
        POLICY_LOSSES.get(self.policy_loss)
        KL_ESTIMATORS.get(self.kl_estimator)
        LOSS_AGGREGATIONS.get(self.loss_agg_mode)
        CORRECTIONS.get(self.correction)
        if self.clip_ratio_low < 0 or self.clip_ratio_high < 0:
            raise ValueError("clip_ratio_low and clip_ratio_high must be >= 0")
        if self.clip_ratio_c <= 1:
            raise ValueError(f"clip_ratio_c must be > 1 (dual clip bounds the loss at c * |A|), got {self.clip_ratio_c}; use .inf to turn it off")
        if self.kl_coef < 0 or self.entropy_coef < 0:
            raise ValueError("kl_coef and entropy_coef must be >= 0")
        if not (0 <= self.gamma <= 1 and 0 <= self.lam <= 1):
            raise ValueError(f"gamma and lam must be in [0, 1], got {self.gamma}, {self.lam}")
        if self.minibatches < 1 or self.epochs < 1:
            raise ValueError("minibatches and epochs must be >= 1")
        self._check_corrections()
        if self.ref_update_every < 0 or self.max_sampling_rounds < 1 or self.overlong_buffer < 0 or self.overlong_penalty < 0:
            raise ValueError("need ref_update_every >= 0, max_sampling_rounds >= 1, overlong_buffer >= 0, overlong_penalty >= 0")
        if self.ref_update_every and self.kl_coef == 0:
            raise ValueError("ref_update_every refreshes the KL reference, but kl_coef = 0 (no reference); set kl_coef > 0 or ref_update_every: 0")

    def _check_corrections(self) -> None:
        if self.tis_cap <= 0:
            raise ValueError(f"tis_cap must be > 0 (.inf for no truncation), got {self.tis_cap}")
        if not 0 <= self.correction_low < 1 < self.correction_high:
            raise ValueError(f"need 0 <= correction_low < 1 < correction_high, got [{self.correction_low}, {self.correction_high}]")
        if self.behaviour_weight_cap <= 0:
            raise ValueError(f"behaviour_weight_cap must be > 0, got {self.behaviour_weight_cap}")
        if self.policy_loss == "decoupled_ppo" and self.correction != "none":
            raise ValueError(
                f"decoupled_ppo already weights each token by pi_prox / pi_behav; correction={self.correction!r} would "
                "correct the same mismatch twice; set algorithm.correction: none"
            )
        if self.policy_loss != "decoupled_ppo" and math.isfinite(self.behaviour_weight_cap):
            raise ValueError(f"behaviour_weight_cap is read only by policy_loss: decoupled_ppo, not {self.policy_loss!r}")
