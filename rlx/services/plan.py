"""`python -m rlx.launch --config ... --dry-run`: compile a run's steps on abstract arrays and print the plan.

Nothing is allocated: the model, optimizer state and batches are `jax.ShapeDtypeStruct`s
(`jax.eval_shape`), placed on a simulated mesh of the configured size by the sharding
rules of each role. The learner step is `Learner._step_impl` itself; the generator steps
are one prefill of `data.max_prompt_len` tokens and one decode step over
`rollout.max_concurrent_decodes` cache slots (what the engine runs). Per-device memory
comes from XLA's memory analysis of the compiled SPMD program.

`parallel.dry_run_layers: k` compiles k-layer and 2k-layer models instead of all layers and
extrapolates each memory figure linearly in the layer count (every layer is the same
program, so the per-layer part is exact up to XLA's buffer reuse; a figure that does not grow
is kept, not shrunk); the plan says so.
"""

from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlx.config import Config
from rlx.learner import Learner
from rlx.learner.train_step import StepTargets, TrainBatch
from rlx.models import KVCache, ModelConfig, Qwen3
from rlx.parallel import batch_sharding, partition_spec, role_meshes, rules_for, tree_shardings

GIB = 1 << 30


@dataclasses.dataclass(frozen=True)
class StepMemory:
    """Bytes per device of one compiled step (XLA memory analysis)."""

    arguments: float
    outputs: float
    aliased: float
    temporaries: float
    compile_s: float

    @property
    def peak(self) -> float:
        return self.arguments + self.outputs - self.aliased + self.temporaries


@dataclasses.dataclass(frozen=True)
class Plan:
    num_devices: int
    learner_mesh: dict[str, int]
    generator_mesh: dict[str, int]
    placement: str
    parameters: int
    sharding: dict[str, list[tuple[str, int, int]]]  # role -> (spec, tensors, parameters)
    steps: dict[str, StepMemory]
    device_memory_gib: float
    compiled_layers: str

    def fits(self) -> bool:
        return all(m.peak <= self.device_memory_gib * GIB for m in self.steps.values())

    def render(self) -> str:
        lines = [
            f"devices: {self.num_devices} ({self.placement}); learner mesh {self.learner_mesh}; generator mesh {self.generator_mesh}",
            f"parameters: {self.parameters:,} ({self.parameters / 1e9:.2f} B)",
            f"compiled: {self.compiled_layers}",
        ]
        for role, rows in self.sharding.items():
            lines.append(f"{role} sharding (spec: tensors, parameters):")
            lines += [f"  {spec}: {tensors}, {count:,}" for spec, tensors, count in rows]
        lines.append("| step | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | peak GiB/device | compile s |")
        lines.append("|---|---|---|---|---|---|---|")
        for name, m in self.steps.items():
            cells = [m.arguments, m.outputs, m.aliased, m.temporaries, m.peak]
            lines.append(f"| {name} | " + " | ".join(f"{c / GIB:.2f}" for c in cells) + f" | {m.compile_s:.1f} |")
        verdict = "fits" if self.fits() else "does NOT fit"
        lines.append(f"device memory: {self.device_memory_gib:g} GiB -> {verdict}")
        return "\n".join(lines)


def simulate_cpu_devices(count: int) -> None:
    """Asks for `count` CPU devices; must run before JAX starts its backend (a no-op after)."""
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # backend already initialized (e.g. under pytest's 8 devices); role_meshes checks the count


def dry_run(config: Config) -> Plan:
    """Lowers and compiles the learner and generator steps of `config` on abstract arrays."""
    if config.model.vocab_size is None:
        raise ValueError("--dry-run needs model.vocab_size (no tokenizer is loaded); set it in the config")
    par = config.parallel
    learner_mesh, generator_mesh = role_meshes(par)
    layers = par.dry_run_layers
    full = config.model.num_layers
    if not layers or layers * 2 > full:
        steps = _compile_steps(config, config.model, learner_mesh, generator_mesh)
        compiled = f"all {full} layers"
    else:
        small = _compile_steps(config, _with_layers(config.model, layers), learner_mesh, generator_mesh)
        large = _compile_steps(config, _with_layers(config.model, 2 * layers), learner_mesh, generator_mesh)
        steps = {name: _extrapolate(small[name], large[name], layers, full) for name in small}
        compiled = f"{layers} and {2 * layers} of {full} layers, memory extrapolated linearly to {full}"
    abstract = _abstract_params(config.model)
    sharding = {
        f"learner ({par.learner_rules})": _sharding_summary(abstract, learner_mesh, par.learner_rules),
        f"generator ({par.generator_rules})": _sharding_summary(abstract, generator_mesh, par.generator_rules),
    }
    parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(abstract))
    return Plan(par.num_devices, par.learner.shape, par.generator.shape, par.placement, parameters, sharding, steps,
                par.device_memory_gib, compiled)


def _with_layers(model: ModelConfig, layers: int) -> ModelConfig:
    if model.num_experts and layers % model.decoder_sparse_step:
        raise ValueError(
            f"parallel.dry_run_layers={layers} must be a multiple of model.decoder_sparse_step={model.decoder_sparse_step}, "
            "so the compiled layers repeat the model's dense/sparse pattern"
        )
    return dataclasses.replace(model, num_layers=layers, mlp_only_layers=tuple(i for i in model.mlp_only_layers if i < layers))


def _extrapolate(small: StepMemory, large: StepMemory, layers: int, full: int) -> StepMemory:
    # A figure that does not grow from k to 2k layers (buffers XLA reuses across layers) is not shrunk either.
    grow = lambda a, b: a + max(b - a, 0.0) * (full - layers) / layers
    return StepMemory(grow(small.arguments, large.arguments), grow(small.outputs, large.outputs),
                      grow(small.aliased, large.aliased), grow(small.temporaries, large.temporaries),
                      small.compile_s + large.compile_s)


def _abstract_params(model: ModelConfig) -> nnx.State:
    return nnx.state(nnx.eval_shape(lambda: Qwen3(model, rngs=nnx.Rngs(0))), nnx.Param)


def _sharding_summary(params: nnx.State, mesh: Mesh, preset: str) -> list[tuple[str, int, int]]:
    shardings = jax.tree.leaves(tree_shardings(params, mesh, rules_for(preset)))
    tensors, counts = Counter(), Counter()
    for sharding, leaf in zip(shardings, jax.tree.leaves(params)):
        spec = str(tuple(sharding.spec))
        tensors[spec] += 1
        counts[spec] += int(np.prod(leaf.shape))
    return [(spec, tensors[spec], counts[spec]) for spec, _ in counts.most_common()]


def _compile_steps(config: Config, model_config: ModelConfig, learner_mesh: Mesh, generator_mesh: Mesh) -> dict[str, StepMemory]:
    learner = _abstract_learner(config, model_config)
    steps = {"learner train step": _learner_step(config, learner, learner_mesh)}
    steps.update(_generator_steps(config, model_config, learner.graphdef, learner.params, generator_mesh))
    return steps


def _abstract_learner(config: Config, model_config: ModelConfig) -> Learner:
    """A `Learner` whose weights and optimizer state are shapes only: built under `jax.eval_shape`."""
    built: list[Learner] = []

    def build():
        model = Qwen3(model_config, rngs=nnx.Rngs(0))
        built.append(Learner(model, config.algorithm, config.optimizer, config.rollout.temperature))
        return built[0].params, built[0].opt_state

    params, opt_state = jax.eval_shape(build)
    learner = built[0]
    learner.params, learner.opt_state = params, opt_state
    learner.ref_params = params if learner.ref_params is not None else None
    return learner


def _learner_step(config: Config, learner: Learner, mesh: Mesh) -> StepMemory:
    rules = rules_for(config.parallel.learner_rules)
    rows = config.data.prompts_per_step * config.rollout.n_samples // config.algorithm.minibatches
    prompt, response = config.data.max_prompt_len, config.rollout.max_new_tokens
    batch = TrainBatch(**_fields(TrainBatch, {
        "tokens": ((rows, prompt + response), jnp.int32), "start": ((rows,), jnp.int32), "mask": ((rows, response), jnp.float32),
        "rewards": ((rows,), jnp.float32), "group_ids": ((rows,), jnp.int32), "behaviour_log_probs": ((rows, response), jnp.float32),
        "staleness": ((rows, response), jnp.float32),
    }))
    targets = StepTargets(**_fields(StepTargets, {}, default=((rows, response), jnp.float32)))
    param_sh = tree_shardings(learner.params, mesh, rules)
    opt_sh = tree_shardings(learner.opt_state, mesh, rules)
    rows_sh = lambda tree: jax.tree.map(lambda x: batch_sharding(mesh, rules, x.shape), tree)
    progress = jax.ShapeDtypeStruct((), jnp.float32)
    step = jax.jit(learner._step_impl, in_shardings=(param_sh, opt_sh, rows_sh(batch), rows_sh(targets), None),
                   out_shardings=(param_sh, opt_sh, None), donate_argnums=(0, 1))
    return _compile(step, learner.params, learner.opt_state, batch, targets, progress)


def _generator_steps(config: Config, model_config: ModelConfig, graphdef: nnx.GraphDef, params: nnx.State,
                     mesh: Mesh) -> dict[str, StepMemory]:
    rules = rules_for(config.parallel.generator_rules)
    slots, prompt = config.rollout.max_concurrent_decodes, config.data.max_prompt_len
    cache = jax.eval_shape(lambda: KVCache.zeros(model_config, slots, prompt + config.rollout.max_new_tokens))
    cache_spec = lambda x: jax.sharding.NamedSharding(
        mesh, partition_spec((None, "batch", None, "kv_heads", "head_dim"), x.shape, rules, mesh, "kv cache"))
    cache_sh = jax.tree.map(cache_spec, cache)
    param_sh = tree_shardings(params, mesh, rules)

    def forward(params, tokens, start, cache, index):
        model = nnx.merge(graphdef, params)
        hidden, cache = model.hidden_states(tokens, start=start, cache=cache, cache_index=index)
        # Only the last position is sampled from: no [rows, length, vocab] logits.
        return jnp.einsum("bd,dv->bv", hidden[:, -1], model.unembedding().astype(hidden.dtype)), cache

    row = lambda shape: batch_sharding(mesh, rules, shape)
    steps = {}
    for name, width in (("generator prefill", prompt), ("generator decode step", 1)):
        tokens, start = jax.ShapeDtypeStruct((slots, width), jnp.int32), jax.ShapeDtypeStruct((slots,), jnp.int32)
        index = jax.ShapeDtypeStruct((), jnp.int32)
        step = jax.jit(forward, in_shardings=(param_sh, row(tokens.shape), row(start.shape), cache_sh, None),
                       out_shardings=(row((slots, 1)), cache_sh), donate_argnums=(3,))
        steps[name] = _compile(step, params, tokens, start, cache, index)
    return steps


def _fields(cls: type, shapes: dict[str, tuple], default: tuple | None = None) -> dict[str, jax.ShapeDtypeStruct]:
    out = {}
    for field in dataclasses.fields(cls):
        shape_dtype = shapes.get(field.name, default)
        if shape_dtype is None and field.default is None:
            continue  # optional inputs (e.g. media of a text-only model) stay None
        if shape_dtype is None:
            raise ValueError(f"dry run: no abstract shape for {cls.__name__}.{field.name}; add it to rlx/services/plan.py")
        out[field.name] = jax.ShapeDtypeStruct(*shape_dtype)
    return out


def _compile(step: Callable, *args: Any) -> StepMemory:
    began = time.perf_counter()
    compiled = step.lower(*args).compile()
    elapsed = time.perf_counter() - began
    stats = compiled.memory_analysis()
    return StepMemory(float(stats.argument_size_in_bytes), float(stats.output_size_in_bytes),
                      float(stats.alias_size_in_bytes), float(stats.temp_size_in_bytes), elapsed)
