"""Test-wide setup. XLA_FLAGS must be set before JAX is first imported."""

import logging
import os
import tempfile
from pathlib import Path

# Tests compile far more than they run, and LLVM's optimisation is most of a CPU compile: without it the suite takes
# about a third less CPU. The last bits of some results differ from an optimised build's (initial weights, so
# warm-start keys): checks against artifacts built with default flags run in a subprocess (`default_compile_env`).
FAST_COMPILE = "--xla_backend_optimization_level=0"
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count=8 {FAST_COMPILE}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = Path(__file__).resolve().parents[1]
# Many tests build a fresh Trainer or engine and compile the same tiny programs again: a session-wide persistent
# compilation cache (fresh per session, so nothing carries between runs) serves the repeats. Tests that assert
# "nothing compiles" switch it off (`no_persistent_cache`), so a cache hit cannot hide a retrace.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", tempfile.mkdtemp(prefix="rlx-tests-jax-cache-"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")

import pytest  # noqa: E402

from rlx.config import Config, load_config  # noqa: E402


@pytest.fixture
def no_persistent_cache():
    """For tests that count compilations: every compile reaches XLA (a persistent-cache hit would not be counted)."""
    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    yield
    jax.config.update("jax_enable_compilation_cache", True)


@pytest.fixture(autouse=True)
def _restore_rlx_logger():
    """Commands run in-process configure the `rlx` logger (own handler, no propagation): undo it, so caplog sees rlx's lines."""
    logger = logging.getLogger("rlx")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield
    logger.handlers[:], logger.level, logger.propagate = saved


def default_compile_env() -> dict[str, str]:
    """The environment of a process that compiles as a user's run does (XLA's default flags, one CPU device)."""
    return {**{k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}, "PYTHONPATH": str(REPO)}


def fast_compile_env() -> dict[str, str]:
    """The environment of a test's subprocess that simulates its own devices but compiles as the tests do."""
    return {**os.environ, "XLA_FLAGS": FAST_COMPILE, "PYTHONPATH": str(REPO)}


def tiny_overrides(output_dir) -> list[str]:
    """A run small enough to train a few steps in seconds."""
    return [
        f"run.output_dir={output_dir}", "run.steps=4", "run.eval_every=2", "run.checkpoint_every=2", "run.progress=false",
        "model.hidden_size=32", "model.intermediate_size=64", "model.num_layers=1", "model.num_heads=2",
        "model.num_kv_heads=1", "model.head_dim=16", "model.max_seq_len=24",
        "data.prompts_per_step=4", "data.val_size=8", "data.train_size=64", "data.max_prompt_len=10",
        "rollout.n_samples=2", "rollout.max_new_tokens=5", "warmup.sft_steps=2", "warmup.batch_size=8",
        "warmup.cache=none",  # hermetic: configs/demo.yaml's `reuse` would store tiny warm starts under ~/.cache
    ]


@pytest.fixture
def tiny_config(tmp_path) -> Config:
    return load_config(None, tiny_overrides(tmp_path / "run"))
