"""Sharding rules as data: logical axis name -> mesh axis (or axes). Unnamed axes stay replicated.

Model code only names its axes (`embed`, `q_heads`, `exp`, ...); a preset decides where
each name goes. Learner presets shard weights for training (FSDP gathers them layer by
layer); generator presets keep weights whole along `embed` so decoding does not gather
every step, and split heads, MLP and experts instead. `batch` is the leading axis of
activations, rollout batches and the KV cache.

| name | axis of |
|---|---|
| embed, vocab | hidden width, vocabulary |
| q_heads, kv_heads, head_dim | attention projections |
| mlp, moe_mlp | dense and expert MLP width |
| exp, router | stacked experts, router outputs |
| batch, cache_seq | activation / cache rows and cache columns |
| mtp_in, confidence | MTP head input ([token, hidden] concatenated), confidence MLP width: replicated everywhere |
"""

from __future__ import annotations

Rules = dict[str, tuple[str, ...]]

_TENSOR = {"q_heads": ("tensor",), "kv_heads": ("tensor",), "mlp": ("tensor",), "moe_mlp": ("tensor",), "vocab": ("tensor",)}

PRESETS: dict[str, Rules] = {
    "replicated": {"batch": ("data", "fsdp")},
    # Learner: ZeRO-3 style, every weight split along its hidden width.
    "fsdp": {"embed": ("fsdp",), "batch": ("data", "fsdp")},
    "fsdp_tp": {"embed": ("fsdp",), **_TENSOR, "batch": ("data", "fsdp")},
    # Experts over `expert`; outside the expert MLP that axis carries more batch rows.
    "fsdp_tp_ep": {"embed": ("fsdp",), **_TENSOR, "exp": ("expert",), "batch": ("data", "fsdp", "expert")},
    # Generator: whole rows of `embed`, heads / MLP / experts split.
    "serve_tp": {**_TENSOR, "batch": ("data", "fsdp")},
    "serve_tp_ep": {**_TENSOR, "exp": ("expert",), "batch": ("data", "fsdp")},
}
