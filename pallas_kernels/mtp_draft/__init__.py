"""The MTP drafting step fused: unembedding and sampling of one draft token per row, with its log-prob; and the
lossless verify's replacement token, sampled from the residual max(0, p - q) with q recomputed the same way.

Modules: ``blockmath`` (counter-based Gumbel noise and the online draft statistics every implementation
shares), ``reference`` (materializes the logits), ``chunked`` (XLA scan over vocabulary chunks), ``pallas``
(Pallas TPU kernel), ``pallas_gpu`` (Pallas GPU kernel, Triton lowering), ``dispatch`` (the public op).
"""

from pallas_kernels.mtp_draft.dispatch import IMPLS, draft_tokens, residual_tokens, resolve_impl
from pallas_kernels.mtp_draft.reference import reference_draft_tokens, reference_residual_tokens

__all__ = ["IMPLS", "draft_tokens", "reference_draft_tokens", "reference_residual_tokens", "residual_tokens", "resolve_impl"]
