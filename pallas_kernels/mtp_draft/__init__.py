"""The MTP drafting step fused: unembedding and sampling of one draft token per row, with its log-prob.

Modules: ``blockmath`` (counter-based Gumbel noise and the online draft statistics every implementation
shares), ``reference`` (materializes the logits), ``chunked`` (XLA scan over vocabulary chunks), ``pallas``
(Pallas TPU kernel), ``pallas_gpu`` (Pallas GPU kernel, Triton lowering), ``dispatch`` (the public op).
"""

from pallas_kernels.mtp_draft.dispatch import IMPLS, draft_tokens, resolve_impl
from pallas_kernels.mtp_draft.reference import reference_draft_tokens

__all__ = ["IMPLS", "draft_tokens", "reference_draft_tokens", "resolve_impl"]
