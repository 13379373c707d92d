"""JetStream interop, kept in this one module: rlx's engine under JetStream's orchestrator and gRPC server.

google-jetstream 0.2.2 (the `jetstream` extra) is archived upstream, imports TensorFlow
through seqio, configures the root logger at import, and calls `jax.tree_map`, which JAX
removed. So it is imported lazily, only here, and patched here only:

* `orchestrator.delete_pytree` (frees a prefix after insert) is replaced by one that uses
  `jax.tree.map`; nothing outside JetStream's module is touched.
* the root logger's level and handlers are restored after JetStream's import changed them,
  and its per-request warning that `Decode` runs without a gRPC context (how rlx calls it
  in-process) is filtered out.

Two JetStream conventions shape the adapter: prompts arrive right-padded to one of its
buckets (16, 32, ...) with BOS prepended by JetStream, and a request's `max_tokens` is
checked once per `generate` call, so the adapted engine must emit one token per call.
The adapter tracks each slot's cache columns (JetStream never says when a slot is free, so a
finished slot keeps counting until reused) to pick the engine's attention length bucket.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import os
import threading
import types
from typing import Any

import jax
import numpy as np
from flax import nnx

from rlx.data import PromptBatch
from rlx.rollout.driver import Completion, GroupRollout, LongPrompt, assemble_groups, check_prompt
from rlx.rollout.engine import Engine
from rlx.rollout.sampling import SamplingParams

log = logging.getLogger(__name__)
JETSTREAM_BUCKETS = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


@functools.cache
def import_jetstream() -> types.SimpleNamespace:
    """JetStream's modules, imported once with the shims above; a clear error without the extra."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (via seqio) is only imported, never used
    try:
        from jetstream.core import orchestrator
        from jetstream.core.proto import jetstream_pb2, jetstream_pb2_grpc
        from jetstream.engine import engine_api, token_utils, tokenizer_api, tokenizer_pb2
    except ImportError as err:
        raise ImportError(
            "JetStream is not installed: rollout.backend=jetstream and `python -m rlx.serve` need the extra, "
            "`pip install -e '.[jetstream]'` (google-jetstream; never the unrelated `jetstream` package)"
        ) from err
    finally:
        root.setLevel(level)
        root.handlers[:] = handlers
    orchestrator.delete_pytree = _delete_pytree
    root.addFilter(lambda record: not record.getMessage().startswith("LLM orchestrator is being used in offline test mode"))
    return types.SimpleNamespace(
        orchestrator=orchestrator, pb2=jetstream_pb2, pb2_grpc=jetstream_pb2_grpc, engine_api=engine_api,
        token_utils=token_utils, tokenizer_api=tokenizer_api, tokenizer_pb2=tokenizer_pb2,
    )


def _delete_pytree(tree: Any) -> None:
    jax.tree.map(lambda leaf: leaf.delete() if isinstance(leaf, jax.Array) else None, tree)


def jetstream_engine(engine: Engine, *, keep_stop_tokens: bool = False) -> Any:
    """`engine` as a `jetstream.engine.engine_api.Engine` (the class is built on first use).

    JetStream drops the token that stops a request; with `keep_stop_tokens` it is returned as
    part of the response (the engine's own stop check then ends the request one call later),
    as RL needs: with several stop ids, which one ended a response cannot be guessed."""
    return _adapter_classes()[0](engine, keep_stop_tokens)


@functools.cache
def _adapter_classes() -> tuple[type, type]:
    js = import_jetstream()

    class Tokenizer(js.tokenizer_api.Tokenizer):
        """rlx's tokenizer in JetStream's interface; `stop_tokens` end a request (and are not returned)."""

        def __init__(self, tokenizer: Any, stop_tokens: tuple[int, ...]):
            self._tokenizer, self._stop = tokenizer, set(stop_tokens)

        def encode(self, s: str, **kwargs: Any) -> tuple[Any, int]:
            ids = np.array(self._tokenizer.encode(s, bos=False), np.int32)
            return js.token_utils.pad_tokens(ids, self.bos_id, self.pad_id, is_bos=kwargs.get("is_bos", True),
                                             max_prefill_length=kwargs.get("max_prefill_length"), jax_padding=kwargs.get("jax_padding", True))

        def decode(self, token_ids: list[int], **kwargs: Any) -> str:
            return self._tokenizer.decode(token_ids)

        pad_id = property(lambda self: self._tokenizer.pad_id)
        eos_id = property(lambda self: self._tokenizer.eos_id)
        bos_id = property(lambda self: self._tokenizer.bos_id)
        stop_tokens = property(lambda self: self._stop)

    class JetStreamEngine(js.engine_api.Engine):
        def __init__(self, engine: Engine, keep_stop_tokens: bool = False):
            if engine.steps_per_generate != 1:
                raise ValueError(
                    f"JetStream checks max_tokens once per generate call, so its engine must emit one token per call; "
                    f"got steps_per_generate={engine.steps_per_generate}"
                )
            if engine.tokenizer is None:
                raise ValueError("JetStream detokenizes on the server: build the engine with a tokenizer")
            self.engine, self.keep_stop_tokens = engine, keep_stop_tokens
            self.truncated_prompts = 0
            self._columns = np.zeros((engine.max_concurrent_decodes,), np.int64)  # cache columns per slot
            # JetStream builds its decode state with no arguments: the key and sampling it gets are set here.
            self.key, self.sampling = jax.random.key(0), SamplingParams(temperature=0.0)

        def prefill(self, *, params, existing_prefix=None, padded_tokens, true_length):
            tokens = np.asarray(padded_tokens)[:true_length]
            if len(tokens) > self.engine.max_prefill_length:
                # Raising here would kill the server (JetStream's threads SIGKILL the process).
                self.truncated_prompts += 1
                log.warning("prompt of %d tokens truncated to its last %d", len(tokens), self.engine.max_prefill_length)
                tokens = tokens[-self.engine.max_prefill_length:]
            return self.engine.prefill(params=params, existing_prefix=existing_prefix, padded_tokens=tokens, true_length=len(tokens))

        def generate(self, params, decode_state):
            self._columns += 1
            decode_state, result = self.engine.generate(params, decode_state, self.sampling, int(self._columns.max()))
            return decode_state, js.engine_api.ResultTokens(result.data, result.tokens_idx, result.valid_idx, result.length_idx, result.samples_per_slot)

        def insert(self, prefix, decode_state, slot):
            self._columns[slot] = prefix.cache.k.shape[2]
            return self.engine.insert(prefix, decode_state, slot)

        def load_params(self, *args, **kwargs):
            return self.engine.load_params(*args, **kwargs)

        def init_decode_state(self):
            self._columns[:] = 0
            return self.engine.decode_state(self.key)

        def get_prefix_destination_sharding(self):
            return self.engine.get_prefix_destination_sharding()

        def get_tokenizer(self):
            return js.tokenizer_pb2.TokenizerParameters(path="rlx")

        def build_tokenizer(self, metadata):
            return Tokenizer(self.engine.tokenizer, () if self.keep_stop_tokens else self.engine.stop_tokens)

        def free_resource(self, slot):
            return self.engine.free_resource(slot)

        max_concurrent_decodes = property(lambda self: self.engine.max_concurrent_decodes)
        samples_per_slot = property(lambda self: self.engine.samples_per_slot)
        mesh = property(lambda self: self.engine.mesh)
        colocated_cpus = property(lambda self: self.engine.colocated_cpus)

        @property
        def max_prefill_length(self) -> int:
            # JetStream pads to its own buckets and requires this to be one of them.
            return next(b for b in JETSTREAM_BUCKETS if b >= self.engine.max_prefill_length + 1)

    return JetStreamEngine, Tokenizer


def start_driver(engine: Any, params: nnx.State) -> Any:
    """JetStream's orchestrator with one interleaved (prefill + generate) engine; `stop()` it when done."""
    js = import_jetstream()
    return js.orchestrator.Driver(prefill_engines=[engine], generate_engines=[engine], prefill_params=[params],
                                  generate_params=[params], interleaved_mode=True)


async def _decode(orchestrator: Any, request: Any) -> list[int]:
    token_ids: list[int] = []
    async for response in orchestrator.Decode(request):
        token_ids.extend(response.stream_content.samples[0].token_ids)
    return token_ids


def decode_all(driver: Any, prompts: list[np.ndarray], max_tokens: list[int]) -> list[list[int]]:
    """Runs token-id requests through JetStream's `LLMOrchestrator.Decode` (JetStream prepends BOS)."""
    js = import_jetstream()
    orchestrator = js.orchestrator.LLMOrchestrator(driver=driver)

    async def run() -> list[list[int]]:
        requests = [
            js.pb2.DecodeRequest(token_content=js.pb2.DecodeRequest.TokenContent(token_ids=[int(t) for t in prompt]), max_tokens=limit)
            for prompt, limit in zip(prompts, max_tokens)
        ]
        return list(await asyncio.gather(*(_decode(orchestrator, request) for request in requests)))

    return asyncio.run_coroutine_threadsafe(run(), _event_loop()).result()


@functools.cache
def _event_loop() -> asyncio.AbstractEventLoop:
    """A loop that outlives every request: JetStream's detokenize thread signals a request's
    end to its loop in two callbacks, and a loop closed in between (as `asyncio.run` would
    close it) makes that thread kill the process."""
    loop = asyncio.new_event_loop()
    threading.Thread(target=loop.run_forever, name="rlx-jetstream-loop", daemon=True).start()
    return loop


class JetStreamRollout:
    """The `jetstream` rollout backend: RL rollouts through JetStream's orchestrator and this engine.

    JetStream returns token ids only, so behaviour log-probs (of the truncated sampling
    distribution, as the engine records them) are recomputed by a teacher-forced pass; stop
    tokens stay in the responses (`keep_stop_tokens`). Weights and
    sampling parameters go to a new orchestrator per rollout (JetStream 0.2.2 has no
    weight-update call); the engine's compiled functions are reused, nothing recompiles.
    """

    def __init__(self, engine: Engine, params: nnx.State, *, long_prompt: LongPrompt = "error", version: int = 0):
        self.engine = engine
        self.adapter = jetstream_engine(engine, keep_stop_tokens=True)
        self.params = engine.load_params(params)
        self.version = version
        self.long_prompt = long_prompt

    def update_weights(self, params: nnx.State, version: int) -> None:
        self.params = self.engine.load_params(params)
        self.version = version

    def generate_groups(self, prompts: PromptBatch, n: int, key: jax.Array, sampling: SamplingParams, max_new_tokens: int) -> GroupRollout:
        bos, truncated = self.engine.tokenizer.bos_id, 0
        rows, sent = [], []
        for row, (tokens, start) in enumerate(zip(prompts.tokens, prompts.start)):
            prompt = tokens[start:] if len(tokens[start:]) and tokens[start] == bos else np.concatenate([[bos], tokens[start:]])
            prompt, cut = check_prompt(prompt, self.engine.max_prefill_length, self.long_prompt, row)
            truncated += cut
            rows += [(row, sample, prompt, cut) for sample in range(n)]
            sent += [prompt[1:]] * n  # JetStream prepends BOS itself
        responses = self.decode(sent, [max_new_tokens] * len(sent), key, sampling)
        completions = []
        for (row, sample, prompt, cut), response in zip(rows, responses):
            tokens = np.array(response, np.int32)
            completions.append(Completion(row, sample, prompt, tokens, np.zeros(len(tokens), np.float32), np.full(len(tokens), self.version, np.int32), cut))
        rollout = assemble_groups(prompts, completions, n, max_new_tokens, pad_id=self.engine.pad_id, metrics={"rollout/truncated_prompts": float(truncated)})
        full = np.concatenate([rollout.prompt_tokens, rollout.generation.tokens], axis=1)
        log_probs = self.engine.score(self.params, full, rollout.start, rollout.prompt_tokens.shape[1], sampling)
        log_probs = np.where(rollout.generation.mask > 0, log_probs, 0.0)  # padding may score -inf under truncation
        return dataclasses.replace(rollout, generation=dataclasses.replace(rollout.generation, log_probs=log_probs.astype(np.float32)))

    def decode(self, prompts: list[np.ndarray], max_tokens: list[int], key: jax.Array, sampling: SamplingParams) -> list[list[int]]:
        """Token ids for each prompt (BOS not included: JetStream adds it), by a fresh orchestrator."""
        self.adapter.key, self.adapter.sampling = key, sampling
        driver = start_driver(self.adapter, self.params)
        try:
            return decode_all(driver, prompts, max_tokens)
        finally:
            driver.stop()


class GrpcServer:
    """JetStream's gRPC `Orchestrator` service over a driver, bound to `host:port` (port 0 picks a free one)."""

    def __init__(self, driver: Any, host: str, port: int, threads: int = 16):
        import grpc

        js = import_jetstream()
        self._driver = driver
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()

        async def build() -> Any:
            server = grpc.aio.server()
            js.pb2_grpc.add_OrchestratorServicer_to_server(js.orchestrator.LLMOrchestrator(driver=driver), server)
            return server, server.add_insecure_port(f"{host}:{port}")

        self._server, self.port = asyncio.run_coroutine_threadsafe(build(), self._loop).result()
        asyncio.run_coroutine_threadsafe(self._server.start(), self._loop).result()
        self.address = f"{host}:{self.port}"

    def wait(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.wait_for_termination(), self._loop).result()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._server.stop(grace=1), self._loop).result()
        self._driver.stop()
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
