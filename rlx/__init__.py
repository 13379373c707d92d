"""rlx: JAX-native RL post-training for language and omni-modal models."""
