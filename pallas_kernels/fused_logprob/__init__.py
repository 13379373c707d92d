"""Fused per-token log-prob and entropy of ``softmax(h @ w / T)``.

Modules: ``reference`` (materializes logits), ``chunked`` (XLA scan over
vocabulary chunks), ``pallas`` (Pallas kernels for TPU), ``pallas_gpu``
(Pallas kernels for GPU, Triton lowering), ``blockmath`` (the online
log-sum-exp and logit gradient they share), ``fused_vjp`` (their shared custom
VJP), ``dispatch`` (the public op), ``sharded`` (the op under ``shard_map`` on sharded rows and vocabulary).
"""

from pallas_kernels.fused_logprob.dispatch import IMPLS, resolve_impl, token_logprobs_and_entropy
from pallas_kernels.fused_logprob.reference import reference_token_logprobs_and_entropy
from pallas_kernels.fused_logprob.sharded import sharded_token_logprobs_and_entropy

__all__ = ["IMPLS", "reference_token_logprobs_and_entropy", "resolve_impl", "sharded_token_logprobs_and_entropy", "token_logprobs_and_entropy"]
