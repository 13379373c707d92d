"""`python -m rlx.launch --config ... --dry-run`: compile a run's programs on abstract arrays and print the plan.

Nothing is allocated: the model, optimizer state and batches are `jax.ShapeDtypeStruct`s
(`jax.eval_shape`), placed on a simulated mesh of the configured size by the sharding
rules of each role. The programs are the ones the run executes: the learner's come from the
same builder (`rlx.learner.build`): the update, the log-prob and advantage passes (and the
teacher's and critic's when configured), on one step's rollouts; with
`learner.micro_batch_rows: auto` the plan picks the largest micro-batch whose programs fit
`parallel.device_memory_gib`, as the run does. The generator's are the engine's own
(`Engine.programs`): prefill, insert, a decode call reading every cache column, recompute, extend,
at their largest shapes. Per-device memory comes from XLA's memory analysis of the
compiled SPMD program; each line says whether it fits. Decoder layers are scanned, so the plan
compiles the whole depth (compile time barely grows with it).
"""

from __future__ import annotations

import dataclasses
import os
from collections import Counter

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from rlx.config import Config
from rlx.data import load_task
from rlx.learner.build import LearnerSpec, build_programs, every_program, fitting_micro_batch_rows
from rlx.learner.memory import GIB, ProgramMemory, measure
from rlx.learner.programs import abstract_batch
from rlx.models import ModelConfig
from rlx.models.weights import abstract_model
from rlx.parallel import role_meshes, rules_for, tree_shardings
from rlx.parallel.layout import Layout
from rlx.rollout import build_engine, sampling_params
from rlx.services.media import media_spec


@dataclasses.dataclass(frozen=True)
class Plan:
    num_devices: int
    learner_mesh: dict[str, int]
    generator_mesh: dict[str, int]
    placement: str
    parameters: int
    sharding: dict[str, list[tuple[str, int, int]]]  # role -> (spec, tensors, parameters)
    steps: dict[str, ProgramMemory]
    device_memory_gib: float
    compiled_layers: str
    workload: str  # rows, tokens, dtypes, micro-batch

    def fits(self) -> bool:
        return all(self._fits(m) for m in self.steps.values())

    def _fits(self, memory: ProgramMemory) -> bool:
        return memory.peak <= self.device_memory_gib * GIB

    def render(self) -> str:
        lines = [
            f"devices: {self.num_devices} ({self.placement}); learner mesh {self.learner_mesh}; generator mesh {self.generator_mesh}",
            f"parameters: {self.parameters:,} ({self.parameters / 1e9:.2f} B)",
            f"compiled: {self.compiled_layers}",
            f"learner: {self.workload}",
        ]
        for role, rows in self.sharding.items():
            lines.append(f"{role} sharding (spec: tensors, parameters):")
            lines += [f"  {spec}: {tensors}, {count:,}" for spec, tensors, count in rows]
        lines.append(f"| program | arguments GiB | outputs GiB | aliased GiB | temporaries GiB | peak GiB/device | compile s | {self.device_memory_gib:g} GiB |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for name, m in self.steps.items():
            cells = [m.arguments, m.outputs, m.aliased, m.temporaries, m.peak]
            verdict = "fits" if self._fits(m) else "does NOT fit"
            lines.append(f"| {name} | " + " | ".join(f"{c / GIB:.2f}" for c in cells) + f" | {m.compile_s:.1f} | {verdict} |")
        verdict = "fits" if self.fits() else "does NOT fit"
        lines.append(f"device memory: {self.num_devices} x {self.device_memory_gib:g} GiB -> {verdict}")
        return "\n".join(lines)


def prepare_planning_backend(count: int) -> None:
    """`count` simulated CPU devices whose compiler skips LLVM's optimisation: a plan compiles programs it never runs,
    and the memory figures come from XLA's buffer assignment, which codegen does not touch (measured: the same figures
    either way, in 57% of the compile CPU for `configs/demo_spec.yaml`). Before JAX starts its backend."""
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
    simulate_cpu_devices(count)


def simulate_cpu_devices(count: int) -> None:
    """Asks for `count` CPU devices; must run before JAX starts its backend (a no-op after)."""
    try:
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", count)
    except RuntimeError:
        pass  # backend already initialized (e.g. under pytest's 8 devices); role_meshes checks the count


def dry_run(config: Config) -> Plan:
    """Lowers and compiles the learner's and the generator's programs of `config` on abstract arrays."""
    model_config = config.model.with_vocab(_vocab_size(config))
    par = config.parallel
    learner_mesh, generator_mesh = role_meshes(par)
    graphdef, params = abstract_model(model_config)
    steps, workload = _learner_programs(config, model_config, graphdef, params, learner_mesh)
    steps.update(_generator_programs(config, model_config, graphdef, params, generator_mesh))
    sharding = {
        f"learner ({par.learner_rules})": _sharding_summary(params, learner_mesh, par.learner_rules),
        f"generator ({par.generator_rules})": _sharding_summary(params, generator_mesh, par.generator_rules),
    }
    parameters = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
    return Plan(par.num_devices, par.learner.shape, par.generator.shape, par.placement, parameters, sharding, steps,
                par.device_memory_gib, f"all {model_config.num_layers} layers", workload)


def _vocab_size(config: Config) -> int:
    """`model.vocab_size`, or the size of the built-in task's tokenizer (a JSONL run's comes from files a plan does not read)."""
    if config.model.vocab_size is not None:
        return config.model.vocab_size
    if config.data.source == "jsonl":
        raise ValueError("--dry-run needs model.vocab_size for a JSONL dataset (no tokenizer is loaded); set it in the config")
    return load_task(config.data, media_spec(config.model)).tokenizer.vocab_size


def _learner_programs(config: Config, model_config: ModelConfig, graphdef: nnx.GraphDef, params: nnx.State,
                      mesh: Mesh) -> tuple[dict[str, ProgramMemory], str]:
    spec = LearnerSpec(model_config, config.algorithm, config.optimizer, config.rollout.temperature, config.learner, config.critic,
                       config.distill)
    teacher = None
    if config.distill.coef > 0:
        teacher_config = config.distill.teacher.with_vocab(model_config.vocab_size)
        teacher = abstract_model(teacher_config)
    layout = Layout(mesh, rules_for(config.parallel.learner_rules))
    rows, prompt, response = config.data.prompts_per_step * config.rollout.n_samples, config.data.max_prompt_len, config.rollout.max_new_tokens
    media = media_spec(model_config)
    routes = (model_config.moe_layers, model_config.num_experts_per_tok) if config.algorithm.routing_replay != "off" else None
    batch = abstract_batch(rows, prompt, response, {m: media.empty(m).shape for m in media.modalities} if media else None, routes)
    micro = config.learner.micro_batch_rows
    workload = (f"{rows} rows of {prompt + response} tokens ({prompt} prompt + {response} response) per step, "
                f"{config.algorithm.epochs * config.algorithm.minibatches} optimizer steps; compute {model_config.dtype}, "
                f"weights and optimizer state {model_config.param_dtype}; remat {config.learner.remat}; micro_batch_rows ")
    if micro == "auto":
        limit = config.parallel.device_memory_gib * GIB
        chosen, memory = fitting_micro_batch_rows(spec, graphdef, params, layout, batch, limit, teacher)
        fits = all(m.peak <= limit for m in memory.values())
        return memory, workload + f"auto -> {chosen} ({'the largest that fits' if fits else 'the smallest there is; none fits'})"
    programs = every_program(build_programs(spec, graphdef, params, layout, micro, teacher), batch)
    return {name: measure(fn, *args) for name, (fn, args) in programs.items()}, workload + str(micro)


def _sharding_summary(params: nnx.State, mesh: Mesh, preset: str) -> list[tuple[str, int, int]]:
    shardings = jax.tree.leaves(tree_shardings(params, mesh, rules_for(preset)))
    tensors, counts = Counter(), Counter()
    for sharding, leaf in zip(shardings, jax.tree.leaves(params)):
        spec = str(tuple(sharding.spec))
        tensors[spec] += 1
        counts[spec] += int(np.prod(leaf.shape))
    return [(spec, tensors[spec], counts[spec]) for spec, _ in counts.most_common()]


def _generator_programs(config: Config, model_config: ModelConfig, graphdef: nnx.GraphDef, params: nnx.State,
                        mesh: Mesh) -> dict[str, ProgramMemory]:
    """The engine's own programs (`Engine.programs`), built from abstract weights: what the generator runs."""
    # Stop and pad ids are constants inside the programs; they change no shape or buffer.
    engine = build_engine(graphdef, params, model_config, config.rollout, config.data.max_prompt_len, eos_id=0, pad_id=0,
                          mesh=mesh, rules=rules_for(config.parallel.generator_rules),
                          record_routes=config.algorithm.routing_replay != "off")
    return {name: measure(fn, *args) for name, (fn, args) in engine.programs(sampling_params(config.rollout)).items()}
