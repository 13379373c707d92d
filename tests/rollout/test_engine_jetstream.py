"""rlx's engine under JetStream's orchestrator and gRPC server (needs the `jetstream` extra, which CI installs)."""

import importlib.util

import jax
import numpy as np
import pytest
from flax import nnx

# Only looked up here: importing JetStream outside rlx's shim would let it reconfigure logging.
if importlib.util.find_spec("jetstream.core.orchestrator") is None:
    pytest.skip("the jetstream extra is not installed: pip install -e '.[jetstream]'", allow_module_level=True)

from tests.conftest import tiny_overrides  # noqa: E402
from rlx.config import load_config  # noqa: E402
from rlx.data import CharTokenizer, PromptRecord, encode_prompts  # noqa: E402
from rlx.models import ModelConfig, Qwen3  # noqa: E402
from rlx.rollout import Engine, Request, RolloutDriver, SamplingParams  # noqa: E402
from rlx.rollout.jetstream_compat import GrpcServer, JetStreamRollout, import_jetstream, jetstream_engine, start_driver  # noqa: E402

TOKENIZER = CharTokenizer("0123456789+=")
TEXTS = ["12+3=", "7+45=", "1=", "99+99="]
GREEDY = SamplingParams(temperature=0.0)


@pytest.fixture(scope="module")
def engine() -> Engine:
    config = ModelConfig(vocab_size=TOKENIZER.vocab_size, hidden_size=32, intermediate_size=48, num_layers=1, num_heads=2,
                         num_kv_heads=1, head_dim=16, max_seq_len=20)
    graphdef, params = nnx.split(Qwen3(config, rngs=nnx.Rngs(5)))
    return Engine(graphdef, params, config, max_concurrent_decodes=2, max_prefill_length=10, max_decode_length=8,
                  stop_tokens=(TOKENIZER.eos_id,), pad_id=TOKENIZER.pad_id, steps_per_generate=1, tokenizer=TOKENIZER)


@pytest.fixture(scope="module")
def rlx_greedy(engine) -> dict[str, np.ndarray]:
    """rlx's driver at greedy: response token ids per prompt text, stop token dropped as JetStream does."""
    driver = RolloutDriver(engine, engine.load_params())
    requests = [Request(TOKENIZER.encode(text), 6, tag=text) for text in TEXTS]
    return {c.tag: [int(t) for t in c.tokens if t != TOKENIZER.eos_id] for c in driver.stream(requests, jax.random.key(0), GREEDY)}


def test_grpc_client_gets_rlx_greedy_tokens(engine, rlx_greedy):
    import grpc

    js = import_jetstream()
    adapter = jetstream_engine(engine)
    server = GrpcServer(start_driver(adapter, adapter.load_params()), "127.0.0.1", 0)
    try:
        with grpc.insecure_channel(server.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = js.pb2_grpc.OrchestratorStub(channel)
            assert stub.HealthCheck(js.pb2.HealthCheckRequest(), timeout=30).is_live
            # More requests than slots at once: JetStream queues them.
            calls = {text: stub.Decode(js.pb2.DecodeRequest(
                token_content=js.pb2.DecodeRequest.TokenContent(token_ids=TOKENIZER.encode(text, bos=False)), max_tokens=6), timeout=60)
                for text in TEXTS}
            for text, call in calls.items():
                tokens = [t for response in call for t in response.stream_content.samples[0].token_ids]
                assert tokens == rlx_greedy[text], text
            text_call = stub.Decode(js.pb2.DecodeRequest(text_content=js.pb2.DecodeRequest.TextContent(text=TEXTS[0]), max_tokens=6), timeout=60)
            assert "".join(r.stream_content.samples[0].text for r in text_call) == TOKENIZER.decode(rlx_greedy[TEXTS[0]])
    finally:
        server.stop()


def test_jetstream_backend_matches_the_engine_backend(engine):
    prompts = encode_prompts([PromptRecord(str(i), text, "") for i, text in enumerate(TEXTS)], TOKENIZER, 8)
    expected = RolloutDriver(engine, engine.load_params()).generate_groups(prompts, 2, jax.random.key(0), GREEDY, 6)
    got = JetStreamRollout(engine, engine.load_params(), version=3).generate_groups(prompts, 2, jax.random.key(0), GREEDY, 6)
    np.testing.assert_array_equal(got.generation.tokens, expected.generation.tokens)
    np.testing.assert_array_equal(got.generation.mask, expected.generation.mask)
    np.testing.assert_allclose(got.generation.log_probs, expected.generation.log_probs, atol=1e-4)
    np.testing.assert_array_equal(got.prompt_tokens, expected.prompt_tokens)
    assert (got.policy_version[got.generation.mask > 0] == 3).all()


def test_trainer_validates_through_the_jetstream_backend(tmp_path):
    from rlx.services.trainer import Trainer

    trainer = Trainer(load_config(None, [*tiny_overrides(tmp_path / "run"), "rollout.backend=jetstream"]))
    try:
        assert isinstance(trainer.rollout, JetStreamRollout)
        metrics = trainer.evaluate()
        assert 0.0 <= metrics["val/accuracy"] <= 1.0 and 1.0 <= metrics["val/response_length/mean"] <= 5.0
    finally:
        trainer.close()


def test_serve_answers_with_fresh_weights_and_says_so(tmp_path, caplog):
    import grpc

    from rlx.serve import build_server

    js = import_jetstream()
    config = load_config(None, [*tiny_overrides(tmp_path / "run"), "rollout.max_concurrent_decodes=2"])
    with caplog.at_level("WARNING", logger="rlx.serve"):
        server = build_server(config, "127.0.0.1", 0)
    try:
        assert "serving freshly initialized weights" in caplog.text and server.address.startswith("127.0.0.1:")
        with grpc.insecure_channel(server.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            stub = js.pb2_grpc.OrchestratorStub(channel)
            request = js.pb2.DecodeRequest(text_content=js.pb2.DecodeRequest.TextContent(text="1+2="), max_tokens=3)
            tokens = [t for response in stub.Decode(request, timeout=60) for t in response.stream_content.samples[0].token_ids]
            assert len(tokens) <= 3  # greedy may stop at once on fresh weights; the stream must end within max_tokens
    finally:
        server.stop()
