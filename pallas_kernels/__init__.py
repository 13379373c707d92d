"""Pallas kernels for rlx, each with a pure-jnp reference, a custom VJP and
backend dispatch. This package must not import ``rlx``."""

from pallas_kernels.fused_logprob import IMPLS as FUSED_LOGPROB_IMPLS
from pallas_kernels.fused_logprob import resolve_impl as resolve_fused_logprob_impl
from pallas_kernels.fused_logprob import sharded_token_logprobs_and_entropy, token_logprobs_and_entropy
from pallas_kernels.mtp_draft import draft_tokens

__all__ = [
    "FUSED_LOGPROB_IMPLS", "draft_tokens", "resolve_fused_logprob_impl", "sharded_token_logprobs_and_entropy", "token_logprobs_and_entropy",
]
