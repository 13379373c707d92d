"""Settings of the multi-token-prediction (MTP) drafting heads. Off by default: a model without them has no head weights."""

from __future__ import annotations

import dataclasses
from typing import Literal

from rlx.checks import require_positive


@dataclasses.dataclass(frozen=True)
class MTPConfig:
    """An MTP head drafting token t+2 from the hidden state at t and token t+1, and a confidence head
    predicting how likely the draft is kept (`rlx.models.mtp`).

    `train_trunk: false` stops the MTP and confidence losses' gradients at the trunk (hidden states,
    embedding and the shared unembedding), so the policy trains exactly as without the heads; the learner
    then also clips and steps the heads' gradients apart from the trunk's. `loss_coef` weighs the MTP
    cross-entropy (token-mean over tokens whose t+1 and t+2 are both trained tokens) and
    `confidence_coef` the confidence head's `confidence_loss` (`bce` or `mse` toward the draft's expected
    acceptance probability, sum_v min(p_v, q_v)) in the warm-up and RL objectives.
    `confidence_width` is the confidence MLP's hidden width.
    """

    enabled: bool = False
    train_trunk: bool = False
    loss_coef: float = 0.1
    confidence_coef: float = 0.1
    confidence_loss: Literal["bce", "mse"] = "bce"
    confidence_width: int = 64

    def __post_init__(self) -> None:
        require_positive(self, "confidence_width")
        for name in ("loss_coef", "confidence_coef"):
            value = getattr(self, name)
            if not value >= 0:
                raise ValueError(f"mtp.{name} must be >= 0 (0 leaves that head untrained), got {value}")
        if self.confidence_loss not in ("bce", "mse"):
            raise ValueError(f"mtp.confidence_loss must be bce or mse, got {self.confidence_loss!r}")
