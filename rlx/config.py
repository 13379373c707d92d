"""One typed schema for a whole run: YAML files under `configs/` plus `a.b=c` overrides.

Each room owns the frozen dataclass for its own section (next to the code that reads
it); this module only composes them and turns raw YAML into typed, validated objects.
Every field has exactly one default: the one written in its dataclass.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import math
import os
import re
import types
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence, Union, get_args, get_origin, get_type_hints

import yaml

from rlx.algorithms.config import AlgorithmConfig
from rlx.bus.config import BusConfig
from rlx.checks import require_positive
from rlx.data.config import DataConfig
from rlx.envs.config import EnvConfig
from rlx.errors import UserError
from rlx.learner.config import CriticConfig, DistillConfig, LearnerConfig, OptimizerConfig, WarmupConfig
from rlx.models.config import ModelConfig
from rlx.models.hf_config import UnsupportedCheckpointError, architecture_from_hf, read_hf_config
from rlx.parallel.config import ParallelConfig
from rlx.rewards.config import RewardConfig
from rlx.rollout.config import RolloutConfig


class ConfigError(UserError):
    """A config value or key is wrong; the message says which and what was expected."""

    label = "config error"


class _Loader(yaml.SafeLoader):
    """YAML 1.1 with numbers and booleans as people write them: `3e-4` and `1E6` are floats (YAML 1.1 asks
    for `3.0e-4`), and only true/false are booleans, as in YAML 1.2 (`off`, `on`, `yes`, `no` stay the words
    that choices such as `bus.interrupt: off` are made of)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)
_Loader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in _Loader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver("tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


@dataclasses.dataclass(frozen=True)
class ServicesConfig:
    """Where the run's roles live and how they are kept healthy (`rlx.services.health`). `backend`: `local` runs
    every role as a thread of one process; `process` runs the learner under a supervisor that restarts it from its
    latest checkpoint when it dies (`rlx.services.supervisor`, through `rlx.launch`) and the generator role in a
    child process of its own (`rlx.services.generator_process`); the reward workers are processes with either
    backend; `ray` runs the learner as `process` does and the generators as Ray actors
    (`rlx.services.generator_ray`, `pip install 'rlx[ray]'`) on a local Ray cluster, or on the one at `ray_address`
    (e.g. `ray://head:10001` or `auto`), each with `ray_generator_cpus` CPUs and `ray_generator_gpus` GPUs. `heartbeat_s`: how
    often `<output_dir>/services.json` is rewritten and an idle reward worker is checked. `max_restarts`: how often
    a failed role is restarted before the run stops naming it (the generator draws its unfinished step again;
    0: stop at once). `generators`: how many generator processes share the steps (`process` and `ray`; a live run is
    rescaled with `python -m rlx.scale`). `hang_timeout_s` (`process` and `ray`): a role that is alive but makes no
    progress for this long while working (a generator inside a step, the learner training, evaluating or saving)
    counts as hung and is restarted like a dead one; generous, since a compile or a long step on a real model
    is progress the role cannot report (a dead or stopped process is found within `2 * heartbeat_s`).
    `generator_cpus` (`process` only): the CPU cores the generator processes run on (`os.sched_setaffinity`; empty:
    those of the learner's process), e.g. to keep generation off the learner's cores; pin the learner with
    `taskset -c CORES python -m rlx.launch ...`.
    """

    backend: Literal["local", "process", "ray"] = "local"
    heartbeat_s: float = 5.0
    max_restarts: int = 3
    generators: int = 1
    ray_address: str | None = None
    ray_generator_cpus: float = 1.0
    ray_generator_gpus: float = 0.0
    hang_timeout_s: float = 600.0
    generator_cpus: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if not self.heartbeat_s > 0:
            raise ValueError(f"heartbeat_s must be > 0 seconds, got {self.heartbeat_s}")
        if not self.hang_timeout_s > 2 * self.heartbeat_s:
            raise ValueError(f"hang_timeout_s must be > 2 * heartbeat_s = {2 * self.heartbeat_s:g} s (the bound for a dead process), "
                             f"got {self.hang_timeout_s}; make it longer than the longest compile or step")
        if self.generator_cpus and self.backend != "process":
            raise ValueError(f"generator_cpus pins generator processes: it needs backend process, got backend {self.backend}")
        cores = os.cpu_count() or 1
        if len(set(self.generator_cpus)) != len(self.generator_cpus) or not all(0 <= cpu < cores for cpu in self.generator_cpus):
            raise ValueError(f"generator_cpus {list(self.generator_cpus)}: name distinct cores in 0..{cores - 1} (this machine has {cores})")
        if self.max_restarts < 0:
            raise ValueError(f"max_restarts must be >= 0 (0: a failing role stops the run), got {self.max_restarts}")
        if self.generators < 1:
            raise ValueError(f"generators must be >= 1 (generator processes), got {self.generators}")
        if self.ray_generator_cpus < 0 or self.ray_generator_gpus < 0:
            raise ValueError(f"ray_generator_cpus and ray_generator_gpus are a generator actor's share of a node's CPUs and GPUs "
                             f"(>= 0, fractions allowed), got {self.ray_generator_cpus} and {self.ray_generator_gpus}")
        ray_settings = (self.ray_address, self.ray_generator_cpus, self.ray_generator_gpus) != (None, 1.0, 0.0)
        if ray_settings and self.backend != "ray":
            raise ValueError(f"ray_address, ray_generator_cpus and ray_generator_gpus place Ray actors; they need backend: ray, "
                             f"not {self.backend}")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Where a run writes, how long it runs, how it validates and what it logs.

    `resume_changes`: a resumed run refuses a checkpoint made with another model architecture, tokenizer
    vocabulary, dataset or seed (`rlx.services.resume`); `allow` resumes anyway and records the change.
    `log_level`: what rlx's own loggers print.

    `eval_samples: K > 0` adds sampled validation (K responses per prompt at the rollout settings:
    `val/pass@k`, `val/avg@K`) to the greedy `val/accuracy`. `loggers` take each step's metrics
    (`wandb`: project `wandb_project`, offline without an API key). `trace: true` writes each role's
    phases per step to `trace.json` (Chrome / Perfetto trace format) and `timeline.png`. `export_hf: true`
    writes the final policy as a Hugging Face checkpoint to `<output_dir>/hf/`."""

    output_dir: str = "runs/demo"
    steps: int = 100
    seed: int = 0
    eval_every: int = 10
    eval_samples: int = 0
    checkpoint_every: int = 10
    keep_checkpoints: int = 2
    save_rollouts: bool = True
    progress: bool = True
    hooks: tuple[str, ...] = ()
    export_hf: bool = False
    loggers: tuple[Literal["jsonl", "tensorboard", "wandb"], ...] = ("jsonl", "tensorboard")
    wandb_project: str = "rlx"
    trace: bool = False
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    resume_changes: Literal["refuse", "allow"] = "refuse"

    def __post_init__(self) -> None:
        if not self.output_dir.strip():
            raise ValueError("output_dir is empty; name a directory for checkpoints and metrics, e.g. run.output_dir=runs/my_run")
        require_positive(self, "steps", "eval_every", "checkpoint_every", "keep_checkpoints")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.eval_samples < 0:
            raise ValueError(f"eval_samples must be >= 0 (0: greedy validation only), got {self.eval_samples}")
        if len(set(self.loggers)) != len(self.loggers):
            raise ValueError(f"loggers lists a logger twice: {list(self.loggers)}")


@dataclasses.dataclass(frozen=True)
class Config:
    run: RunConfig = RunConfig()
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    rollout: RolloutConfig = RolloutConfig()
    reward: RewardConfig = RewardConfig()
    algorithm: AlgorithmConfig = AlgorithmConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    learner: LearnerConfig = LearnerConfig()
    warmup: WarmupConfig = WarmupConfig()
    critic: CriticConfig = CriticConfig()
    distill: DistillConfig = DistillConfig()
    parallel: ParallelConfig = ParallelConfig()
    bus: BusConfig = BusConfig()
    env: EnvConfig = EnvConfig()
    services: ServicesConfig = ServicesConfig()

    def __post_init__(self) -> None:
        _check_algorithm_sections(self)
        _check_modalities(self)
        _check_hf_checkpoints(self)
        _check_bus(self)
        _check_processes(self)
        _check_services(self)
        _check_minibatches(self)
        _check_env(self)
        if self.rollout.speculative != "off" and (not self.model.mtp.enabled or self.algorithm.routing_replay != "off"):
            raise ValueError(f"rollout.speculative: {self.rollout.speculative} drafts with the model's MTP head and records no MoE routes: "
                             "set model.mtp.enabled: true and algorithm.routing_replay: off")
        if self.rollout.speculative == "confidence" and self.algorithm.correction == "none" and self.algorithm.policy_loss != "decoupled_ppo":
            raise ValueError("rollout.speculative: confidence keeps unverified drafts and records their draft log-probs; only an "
                             "off-policy correction reads them: set algorithm.correction (tis, icepop, ...) or algorithm.policy_loss: decoupled_ppo")
        needed = self.data.max_prompt_len + self.rollout.max_new_tokens
        if needed > self.model.max_seq_len:
            raise ValueError(
                f"data.max_prompt_len + rollout.max_new_tokens = {needed} exceeds "
                f"model.max_seq_len = {self.model.max_seq_len}; raise model.max_seq_len "
                "or shorten prompts/responses"
            )


def _check_modalities(config: Config) -> None:
    """Features that do not carry media yet must not silently drop them."""
    if not (config.model.vision.enabled or config.model.audio.enabled):
        return
    if config.rollout.backend != "engine":
        raise ValueError(f"rollout.backend={config.rollout.backend!r} sends token ids only; modality encoders need rollout.backend: engine")
    if config.bus.interrupt == "recompute_cache":
        raise ValueError("bus.interrupt=recompute_cache re-runs prompts without their media; use bus.interrupt: keep_cache or off with modality encoders")
    if config.distill.coef > 0 or config.critic.enabled:
        raise ValueError("modality encoders do not work with distill.coef > 0 or critic.enabled yet (teacher and critic see no media)")


def _check_hf_checkpoints(config: Config) -> None:
    """Hugging Face Qwen3 checkpoints hold a text decoder only."""
    encoders = config.model.vision.enabled or config.model.audio.enabled
    if encoders and (config.model.init_from is not None or config.run.export_hf):
        raise ValueError("model.init_from and run.export_hf read and write text-only Qwen3 checkpoints; "
                         "they do not work with model.vision or model.audio enabled")


def _check_bus(config: Config) -> None:
    bus = config.bus
    if bus.capacity is not None and bus.capacity < config.data.prompts_per_step:
        raise ValueError(
            f"bus.capacity={bus.capacity} prompt groups cannot hold one step's data.prompts_per_step={config.data.prompts_per_step}; "
            "raise it or set it to null"
        )
    if bus.interrupt != "off" and config.rollout.backend != "engine":
        raise ValueError(f"bus.interrupt={bus.interrupt!r} swaps weights inside rlx's driver; it needs rollout.backend=engine")
    if config.rollout.token_budget is not None and config.algorithm.dynamic_sampling:
        raise ValueError("rollout.token_budget carries samples across steps, algorithm.dynamic_sampling redraws within one; use one of them")


def _check_processes(config: Config) -> None:
    """What runs across several processes (`parallel.distributed`): the synchronous and the asynchronous loop."""
    if config.parallel.distributed.mode != "off" and config.rollout.token_budget is not None:
        raise ValueError(
            "rollout.token_budget (partial rollouts) is not supported with several processes (parallel.distributed.mode: "
            f"{config.parallel.distributed.mode}): set rollout.token_budget: null, or run one process"
        )


def _check_services(config: Config) -> None:
    """What a generator in its own process (`services.backend: process` or `ray`) does not do yet is refused here."""
    generators, backend = config.services.generators, config.services.backend
    if generators > 1 and backend == "local":
        raise ValueError(f"services.generators={generators} runs generator processes; it needs services.backend: process or ray")
    drawing_unknown_prompts = {"algorithm.dynamic_sampling (more rounds per step)": config.algorithm.dynamic_sampling,
                               "rollout.token_budget (partial rollouts draw prompts ahead as slots free)": config.rollout.token_budget is not None}
    for setting, used in drawing_unknown_prompts.items():
        if used and generators > 1:
            raise ValueError(f"services.generators={generators} splits steps between generators by where each begins in the "
                             f"prompt stream, which {setting} does not know in advance; use one generator")
    if backend == "local":
        return
    if backend == "ray" and importlib.util.find_spec("ray") is None:
        raise ValueError("services.backend=ray needs Ray, which is not installed here: pip install 'rlx[ray]'")
    if config.parallel.distributed.mode != "off":
        raise ValueError(f"services.backend={backend} does not support parallel.distributed.mode={config.parallel.distributed.mode} "
                         "yet; use services.backend: local for it")


def _check_minibatches(config: Config) -> None:
    rows, minibatches = config.data.prompts_per_step * config.rollout.n_samples, config.algorithm.minibatches
    if rows % minibatches:
        raise ValueError(
            f"a step's data.prompts_per_step * rollout.n_samples = {rows} rollouts do not split into algorithm.minibatches="
            f"{minibatches}; choose a divisor of {rows}"
        )


def _check_env(config: Config) -> None:
    """Multi-turn rollouts (`env.fn`) run in rlx's driver; what they do not combine with yet is refused here."""
    if config.env.fn is None:
        return
    unsupported = {
        "rollout.backend: jetstream (multi-turn rollouts run in rlx's driver; use backend: engine)": config.rollout.backend != "engine",
        "rollout.token_budget (trajectories are not carried across steps yet; set it to null)": config.rollout.token_budget is not None,
        "bus.interrupt: recompute_cache (use keep_cache or off)": config.bus.interrupt == "recompute_cache",
        "modality encoders (not supported with multi-turn rollouts yet)": config.model.vision.enabled or config.model.audio.enabled,
        "algorithm.routing_replay (observations appended by Engine.extend record no routes yet; set it to off)":
            config.algorithm.routing_replay != "off",
    }
    refused = [what for what, applies in unsupported.items() if applies]
    if refused:
        raise ValueError(f"env.fn={config.env.fn!r} (multi-turn rollouts) does not work with {'; '.join(refused)}")


def _check_algorithm_sections(config: Config) -> None:
    """Algorithm settings that only make sense together with other sections."""
    algo = config.algorithm
    if (algo.adv_estimator == "gae") != config.critic.enabled:
        raise ValueError(
            f"algorithm.adv_estimator={algo.adv_estimator!r} with critic.enabled={config.critic.enabled}: "
            "gae needs a critic and only gae uses one; set both (adv_estimator: gae, critic.enabled: true) or neither"
        )
    grouped = algo.adv_estimator in ("grpo", "rloo", "reinforce_plus_plus_baseline") or algo.dynamic_sampling
    if grouped and config.rollout.n_samples < 2:
        raise ValueError(
            f"algorithm.adv_estimator={algo.adv_estimator!r} (or dynamic_sampling) compares samples within a prompt's group, "
            "but rollout.n_samples=1; set rollout.n_samples >= 2 or use reinforce_plus_plus / gae"
        )
    if algo.overlong_buffer >= config.rollout.max_new_tokens:
        raise ValueError(
            f"algorithm.overlong_buffer={algo.overlong_buffer} must be smaller than rollout.max_new_tokens="
            f"{config.rollout.max_new_tokens} (the penalty ramps over the last overlong_buffer tokens)"
        )
    if config.learner.proximal == "approximate" and (algo.correction != "none" or config.distill.coef > 0 or (algo.kl_coef > 0 and algo.kl_penalty == "reward")):
        raise ValueError(
            "learner.proximal=approximate has no proximal log-probs before the loss, but algorithm.correction, distill.coef or "
            "a reward KL penalty needs them; use learner.proximal=recompute, or correction: none, distill.coef: 0, kl_penalty: loss"
        )
    if algo.routing_replay != "off" and (not config.model.moe_layers or config.rollout.backend != "engine"):
        raise ValueError(
            f"algorithm.routing_replay={algo.routing_replay!r} records the experts rlx's engine routes each token to: it needs "
            f"a mixture-of-experts model (model.num_experts > 0, got {config.model.num_experts}) and rollout.backend: engine "
            f"(got {config.rollout.backend!r}); set algorithm.routing_replay: off otherwise"
        )
    teacher_len = config.data.max_prompt_len + config.rollout.max_new_tokens
    if config.distill.coef > 0 and teacher_len > config.distill.teacher.max_seq_len:
        raise ValueError(f"distill.teacher.max_seq_len = {config.distill.teacher.max_seq_len} is below prompt + response = {teacher_len}")


def load_config(path: str | Path | None, overrides: Sequence[str] = ()) -> Config:
    """Reads YAML (or starts from defaults when `path` is None) and applies `a.b=c` overrides."""
    raw = read_yaml(Path(path)) if path is not None else {}
    for override in overrides:
        apply_override(raw, override)
    return from_dict(Config, resolve_init_from(raw))


def resolve_init_from(raw: dict[str, Any]) -> dict[str, Any]:
    """Raw config with the architecture of each `init_from` checkpoint (`model`, `distill.teacher`) filled
    in from its config.json; a field the config sets too must agree. JSONL data without
    `data.tokenizer_path` takes the tokenizer in `model.init_from`."""
    resolved = dict(raw)
    model = _resolve_section(raw.get("model"), "model")
    if model is not None:
        resolved["model"] = model
        data = raw.get("data")
        if isinstance(data, dict) and data.get("source") == "jsonl" and data.get("tokenizer_path") is None:
            resolved["data"] = {**data, "tokenizer_path": model["init_from"]}
    distill = raw.get("distill")
    teacher = _resolve_section(distill.get("teacher"), "distill.teacher") if isinstance(distill, dict) else None
    if teacher is not None:
        resolved["distill"] = {**distill, "teacher": teacher}
    return resolved


def _resolve_section(section: Any, key: str) -> dict[str, Any] | None:
    """`section` (a raw ModelConfig) with its checkpoint's architecture filled in; None without `init_from`."""
    if not isinstance(section, dict) or section.get("init_from") is None:
        return None
    source = section["init_from"]
    if not isinstance(source, str):
        raise ConfigError(f"{key}.init_from: expected a path to a Hugging Face model directory, got {source!r}")
    try:
        architecture = architecture_from_hf(read_hf_config(source))
    except UnsupportedCheckpointError as err:
        raise ConfigError(f"{key}.init_from: {err}") from None
    hints = get_type_hints(ModelConfig)
    for name, value in architecture.items():
        if name in section and _convert(hints[name], section[name], f"{key}.{name}") != value:
            raise ConfigError(
                f"{key}.{name} = {section[name]!r} but {source}/config.json gives {value!r}; the architecture comes from "
                f"{key}.init_from: remove {key}.{name} from the config (or set it to {value!r})"
            )
    return {**section, **architecture}


def read_yaml(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Raw config of `path`; a top-level `base: other.yaml` (relative to `path`) is loaded first
    and this file's sections are merged over it, key by key."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    if path.resolve() in _seen:
        raise ConfigError(f"config files include each other in a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    loaded = _parse_file(path)
    if loaded is None:
        loaded = {}
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(loaded).__name__}")
    base = loaded.pop("base", None)
    if base is None:
        return loaded
    if not isinstance(base, str):
        raise ConfigError(f"{path}: base must be a path to another YAML file, got {base!r}")
    return _merge(read_yaml(path.parent / base, _seen + (path.resolve(),)), loaded)


def _parse_file(path: Path) -> Any:
    try:
        return parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path} is not a UTF-8 text file (byte {err.start}: {err.reason}); give a YAML config file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: {_yaml_problem(err)}; fix the YAML syntax there") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """`line L, column C: problem` from a YAML error (lines and columns counted from 1)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    return f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def apply_override(raw: dict[str, Any], override: str) -> None:
    """Sets `a.b.c=value` in a nested dict; the value is parsed as YAML (`1`, `true`, `[a, b]`)."""
    key, sep, text = override.partition("=")
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {override!r} is not of the form section.key=value")
    parts = key.split(".")
    node = raw
    for depth, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {override!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = parse_yaml(text) if text.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {override!r}: the value is not valid YAML ({_yaml_problem(err)}); quote it if it is text") from None


def from_dict(cls: type, raw: Mapping[str, Any], prefix: str = "") -> Any:
    """Builds dataclass `cls` from a mapping, checking every key and value against its type."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{prefix or 'config'} must be a mapping, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = get_type_hints(cls)
    for key in raw:
        if key not in fields:
            raise ConfigError(_unknown_key_message(str(key), list(fields), prefix))
    kwargs = {name: _convert(hints[name], raw[name], _join(prefix, name)) for name in fields if name in raw}
    for name, value in kwargs.items():
        # Infinity is a value only where it means "off" and the field says so by defaulting to it.
        if isinstance(value, float) and math.isinf(value) and not _infinite_default(fields[name]):
            raise ConfigError(f"{_join(prefix, name)}: expected a finite number, got {value!r}")
    try:
        return cls(**kwargs)
    except (ValueError, TypeError) as err:
        raise ConfigError(f"{prefix or 'config'}: {err}") from None


def _infinite_default(field: dataclasses.Field) -> bool:
    return isinstance(field.default, float) and math.isinf(field.default)


def to_dict(config: Any) -> dict[str, Any]:
    """The config as plain YAML-able data (tuples become lists)."""
    def plain(value: Any) -> Any:
        if dataclasses.is_dataclass(value):
            return {f.name: plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        return value
    return plain(config)


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _unknown_key_message(key: str, valid: list[str], prefix: str) -> str:
    where = f"in section '{prefix}'" if prefix else "at the top level"
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"; did you mean '{_join(prefix, close[0])}'?" if close else ""
    return f"unknown key '{_join(prefix, key)}' {where}{hint} (valid keys: {', '.join(sorted(valid))})"


def _convert(annotation: Any, value: Any, key: str) -> Any:
    origin = get_origin(annotation)
    if dataclasses.is_dataclass(annotation):
        return from_dict(annotation, value, key)
    if origin in (Union, types.UnionType):
        options = get_args(annotation)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} matches none of {annotation}")
    if origin is Literal:
        choices = get_args(annotation)
        if value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(repr(c) for c in choices)}")
        return value
    if origin is tuple:
        item_type = get_args(annotation)[0]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return tuple(_convert(item_type, item, f"{key}[{i}]") for i, item in enumerate(value))
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        if math.isnan(value):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}; quote it ('{value}') if it is text")
        return value
    raise ConfigError(f"{key}: unsupported field type {annotation}")  # a schema bug, not user input
