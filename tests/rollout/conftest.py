"""Shared by the engine and driver tests: one tiny model, engines by shape (each compiles once), references."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rlx.data import CharTokenizer, PromptBatch, PromptRecord
from rlx.models import ModelConfig, Qwen3
from rlx.rollout import Engine, RolloutDriver, SamplingParams

PAD = 0
PROMPTS = [np.array(p, np.int32) for p in ([1, 7, 8, 9], [1, 5, 6, 7, 8, 9], [1, 4, 4], [1, 3])]
GREEDY = SamplingParams(temperature=0.0)
TOKENIZER = CharTokenizer("0123456789+=x")  # 19 ids, the test model's vocabulary: decodes responses for stop strings


@pytest.fixture(scope="package")
def model() -> Qwen3:
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=48, num_layers=2, num_heads=4, num_kv_heads=2, head_dim=8, max_seq_len=24)
    return Qwen3(config, rngs=nnx.Rngs(3))


@pytest.fixture(scope="package")
def make_engine(model):
    """Engines by shape, shared by the rollout tests so each compiles once."""
    graphdef, params = nnx.split(model)

    @functools.lru_cache
    def make(slots=3, stop=(), max_prefill=12) -> Engine:
        return Engine(graphdef, params, model.config, max_concurrent_decodes=slots, max_prefill_length=max_prefill,
                      max_decode_length=8, stop_tokens=stop, pad_id=PAD, steps_per_generate=2, tokenizer=TOKENIZER)

    return make


@pytest.fixture(scope="package")
def driver(make_engine) -> RolloutDriver:
    """No stop token, 3 slots: 4 prompts x 2 samples queue for slots and reuse them."""
    engine = make_engine()
    return RolloutDriver(engine, engine.load_params())


@pytest.fixture(scope="package")
def greedy_reference(model):
    """Reference: append the argmax of a full (cache-free) forward pass, one token at a time."""
    graphdef, params = nnx.split(model)
    next_token = jax.jit(lambda p, ids, start: jnp.argmax(nnx.merge(graphdef, p)(ids, start=start)[0][:, -1], axis=-1))

    def greedy(prompt, steps, weights=params):
        sequence = list(prompt)
        for _ in range(steps):
            width = 16  # one compiled shape: left-pad every prefix to 16 columns
            ids = np.array([[PAD] * (width - len(sequence)) + sequence], np.int32)
            sequence.append(int(next_token(weights, ids, np.array([width - len(sequence)], np.int32))[0]))
        return np.array(sequence[len(prompt):])

    return greedy


def prompt_batch(prompts) -> PromptBatch:
    width = max(len(p) for p in prompts)
    tokens = np.stack([np.pad(p, (width - len(p), 0)) for p in prompts]).astype(np.int32)
    records = [PromptRecord(str(i), "x", "y") for i in range(len(prompts))]
    return PromptBatch(records, tokens, np.array([width - len(p) for p in prompts], np.int32))


