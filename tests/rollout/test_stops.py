"""Stops: several stop ids (the tokenizer's `stop_ids`) and stop strings; the stopping token stays in the mask."""

import json

import jax
import numpy as np
import pytest
from flax import nnx

from rlx.data import CharTokenizer
from rlx.data.hf_tokenizer import HFTokenizer
from rlx.models import ModelConfig, Qwen3
from rlx.rollout import Request, RolloutConfig, RolloutDriver, build_engine
from rlx.rollout.driver import Generation
from tests.data.test_hf_tokenizer import _write
from tests.rollout.conftest import GREEDY, PROMPTS, TOKENIZER, prompt_batch


@pytest.fixture(scope="module")
def unstopped(make_engine):
    """Greedy responses of 8 tokens with no stop, by prompt."""
    engine = make_engine()
    driver = RolloutDriver(engine, engine.load_params())
    return {c.tag: c.tokens for c in driver.stream([Request(p, 8, tag=i) for i, p in enumerate(PROMPTS)], jax.random.key(0), GREEDY)}


def first_stop(tokens: np.ndarray, ended) -> int:
    """Length of the response once it ends at the first position `ended(tokens[:i + 1])` holds."""
    return next((i + 1 for i in range(len(tokens)) if ended(tokens[: i + 1])), len(tokens))


def test_any_of_several_stop_ids_ends_a_response_and_stays_in_the_mask(make_engine, unstopped):
    stops = (int(unstopped[0][2]), int(unstopped[1][1]))
    engine = make_engine(stop=stops)
    rollout = RolloutDriver(engine, engine.load_params()).generate_groups(prompt_batch(PROMPTS), 1, jax.random.key(0), GREEDY, 8)
    ended_by = set()
    for row, tokens in unstopped.items():
        length = first_stop(tokens, lambda prefix: prefix[-1] in stops)
        assert rollout.generation.lengths[row] == length
        np.testing.assert_array_equal(rollout.generation.tokens[row, :length], tokens[:length])
        assert rollout.generation.mask[row, :length].all() and not rollout.generation.mask[row, length:].any()
        if length < 8:
            ended_by.add(int(tokens[length - 1]))
    assert ended_by == set(stops)


def test_a_stop_string_ends_the_response_at_the_token_that_completes_it(make_engine, unstopped):
    text = TOKENIZER.decode(unstopped[1])
    stop = text[2:4]  # spans two tokens of the second response
    assert len(stop) == 2
    engine = make_engine()
    driver = RolloutDriver(engine, engine.load_params(), stop_strings=(stop, "never"))
    rollout = driver.generate_groups(prompt_batch(PROMPTS), 1, jax.random.key(0), GREEDY, 8)
    for row, tokens in unstopped.items():
        length = first_stop(tokens, lambda prefix: stop in TOKENIZER.decode(prefix))
        assert rollout.generation.lengths[row] == length, row
        np.testing.assert_array_equal(rollout.generation.tokens[row, :length], tokens[:length])
        assert rollout.generation.mask[row, length - 1] == 1 and TOKENIZER.decode(tokens[:length]).endswith(stop) == (length < 8)
    assert rollout.generation.lengths[1] < 8


def test_stop_strings_need_a_tokenizer_and_the_engine_backend(make_engine):
    engine = make_engine()
    with pytest.raises(ValueError, match="non-empty strings"):
        RolloutDriver(engine, engine.load_params(), stop_strings=("",))
    with pytest.raises(ValueError, match="need backend: engine"):
        RolloutConfig(backend="jetstream", stop_strings=("\n\n",))
    with pytest.raises(ValueError, match="non-empty strings"):
        RolloutConfig(stop_strings=("",))


def test_tokenizers_name_their_stop_ids_and_the_engine_stops_on_them(tmp_path):
    assert CharTokenizer("ab").stop_ids == (2,)
    config = {"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}
    directory = _write(tmp_path / "qwen", config)
    assert HFTokenizer.from_directory(directory).stop_ids == (2,)
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))  # <|im_end|>, <|endoftext|>
    tokenizer = HFTokenizer.from_directory(directory)
    assert tokenizer.stop_ids == (2, 0)  # id 0 is a real id
    (directory / "generation_config.json").write_text(json.dumps({"eos_token_id": 0}))
    assert HFTokenizer.from_directory(directory).stop_ids == (2, 0)
    model_config = ModelConfig(vocab_size=tokenizer.vocab_size, max_seq_len=32)
    abstract = nnx.eval_shape(lambda: Qwen3(model_config, rngs=nnx.Rngs(0)))
    engine = build_engine(nnx.graphdef(abstract), nnx.state(abstract, nnx.Param), model_config, RolloutConfig(max_concurrent_decodes=2),
                          16, eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id, tokenizer=tokenizer)
    assert engine.stop_tokens == (2, 0)


def test_a_response_is_clipped_only_when_it_fills_every_column_without_a_stop_token():
    tokens = np.array([[5, 2, 0], [5, 6, 7], [5, 6, 0], [5, 6, 2]], np.int32)  # stops 2 and 0 (id 0 is a real id)
    mask = np.array([[1, 1, 0], [1, 1, 1], [1, 1, 1], [1, 1, 1]], np.float32)
    generation = Generation(tokens, np.zeros_like(mask), mask, mask.sum(1).astype(np.int32))
    assert generation.clipped((2, 0)).tolist() == [False, True, False, False]
    assert generation.clipped((2,)).tolist() == [False, True, True, False]
