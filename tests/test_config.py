from pathlib import Path

import pytest

from rlx.config import Config, ConfigError, RunConfig, apply_override, load_config

REPO = Path(__file__).resolve().parents[1]


def test_defaults_build_without_a_file():
    config = load_config(None)
    assert isinstance(config, Config) and config.run == RunConfig()


def test_demo_yaml_loads_and_opens_with_its_command():
    text = (REPO / "configs" / "demo.yaml").read_text()
    assert text.startswith("# CPU demo")
    assert "python -m rlx.launch --config configs/demo.yaml" in text.splitlines()[1]
    assert load_config(REPO / "configs" / "demo.yaml").run.steps > 0


def test_overrides_are_parsed_as_yaml_values():
    config = load_config(None, ["run.steps=7", "rollout.temperature=0.5", "run.save_rollouts=false", "run.hooks=[a.b:c]"])
    assert config.run.steps == 7 and config.rollout.temperature == 0.5
    assert config.run.save_rollouts is False and config.run.hooks == ("a.b:c",)


def test_integer_is_accepted_for_a_float_field():
    assert load_config(None, ["optimizer.learning_rate=1"]).optimizer.learning_rate == 1.0


@pytest.mark.parametrize(
    "override, expected",
    [
        ("run.stepz=3", "unknown key 'run.stepz' in section 'run'; did you mean 'run.steps'?"),
        ("rolout.n_samples=3", "unknown key 'rolout' at the top level; did you mean 'rollout'?"),
        ("data.arithmetic.max_digit=3", "did you mean 'data.arithmetic.max_digits'?"),
    ],
)
def test_unknown_key_names_the_nearest_valid_key(override, expected):
    with pytest.raises(ConfigError, match=expected.replace("?", r"\?").replace(".", r"\.")):
        load_config(None, [override])


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("run.steps=ten", "run.steps: expected an integer, got 'ten'"),
        ("run.steps=2.5", "run.steps: expected an integer, got 2.5"),
        ("run.steps=true", "run.steps: expected an integer, got True"),
        ("run.progress=1", "run.progress: expected true or false, got 1"),
        ("data.source=parquet", "data.source: 'parquet' is not one of 'arithmetic', 'calculator', 'omni', 'jsonl'"),
        ("model.dtype=float16", "model.dtype: 'float16' is not one of"),
        ("run.hooks=x", "run.hooks: expected a list, got 'x'"),
    ],
)
def test_wrong_type_names_key_value_and_expectation(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("run.steps=0", "run: steps must be >= 1, got 0"),
        ("rollout.top_p=1.5", "rollout: top_p must be in (0, 1], got 1.5"),
        ("model.num_kv_heads=3", "num_heads (4) must be a multiple of num_kv_heads (3)"),
        ("algorithm.adv_estimator=grpoo", "unknown advantage estimator 'grpoo'; registered: gae, grpo"),
        ("data.source=jsonl", "source: jsonl needs data.train_path and data.val_path"),
    ],
)
def test_bad_values_are_explained(override, fragment):
    with pytest.raises(ConfigError) as info:
        load_config(None, [override])
    assert fragment in str(info.value)


def test_cross_section_length_check():
    with pytest.raises(ConfigError, match="exceeds model.max_seq_len"):
        load_config(None, ["model.max_seq_len=8", "data.max_prompt_len=6", "rollout.max_new_tokens=4"])


@pytest.mark.parametrize("override", ["run.steps", "=3", "run..steps=3"])
def test_malformed_override(override):
    with pytest.raises(ConfigError, match="not of the form"):
        load_config(None, [override])


def test_override_through_a_value_is_rejected():
    raw = {"run": {"steps": 3}}
    with pytest.raises(ConfigError, match="run.steps is a value, not a section"):
        apply_override(raw, "run.steps.x=1")


def test_yaml_must_be_a_mapping(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_configs_are_frozen():
    config = load_config(None)
    with pytest.raises(Exception):
        config.run.steps = 3  # type: ignore[misc]


def test_base_file_is_merged_under_the_config(tmp_path):
    (tmp_path / "base.yaml").write_text("run:\n  steps: 9\n  seed: 3\nrollout:\n  n_samples: 4\n")
    (tmp_path / "child.yaml").write_text("base: base.yaml\nrun:\n  steps: 5\n")
    config = load_config(tmp_path / "child.yaml", ["rollout.n_samples=2"])
    assert (config.run.steps, config.run.seed, config.rollout.n_samples) == (5, 3, 2)


def test_base_cycles_and_missing_bases_are_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")
    (tmp_path / "c.yaml").write_text("base: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "c.yaml")


def test_modality_encoders_refuse_paths_that_would_drop_media():
    with pytest.raises(ValueError, match="rollout.backend: engine"):
        load_config(None, ["model.vision.enabled=true", "rollout.backend=jetstream"])
    with pytest.raises(ValueError, match="teacher and critic see no media"):
        load_config(None, ["model.audio.enabled=true", "algorithm.adv_estimator=gae", "critic.enabled=true"])


@pytest.mark.parametrize("overrides, message", [
    (["bus.max_staleness=-1"], "max_staleness must be >= 0"),
    (["bus.capacity=3", "data.prompts_per_step=4"], "bus.capacity=3 prompt groups cannot hold"),
    (["bus.interrupt=keep_cache", "rollout.backend=jetstream"], "needs rollout.backend=engine"),
    (["bus.interrupt=sometimes"], "'sometimes' is not one of"),
    (["rollout.token_budget=0"], "token_budget must be >= 1 generated tokens per step or null"),
    (["rollout.token_budget=64", "rollout.backend=jetstream"], "token_budget keeps sequences in rlx's driver.*needs backend: engine"),
    (["rollout.token_budget=64", "algorithm.dynamic_sampling=true"], "use one of them"),
    (["learner.proximal=approximate", "algorithm.correction=tis"], "learner.proximal=approximate has no proximal"),
])
def test_async_settings_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_scientific_notation_is_a_number_in_files_and_overrides(tmp_path):
    (tmp_path / "c.yaml").write_text("optimizer:\n  learning_rate: 3e-4\nreward:\n  on_error_reward: -1E1\n")
    config = load_config(tmp_path / "c.yaml", ["optimizer.warmup_steps=5", "warmup.learning_rate=2e-3"])
    assert (config.optimizer.learning_rate, config.reward.on_error_reward, config.warmup.learning_rate) == (3e-4, -10.0, 2e-3)
    with pytest.raises(ConfigError, match="run.output_dir: expected a string, got 100000.0; quote it"):
        load_config(None, ["run.output_dir=1e5"])


@pytest.mark.parametrize("override, message", [
    ("optimizer.learning_rate=.nan", "expected a number, got nan"),
    ("optimizer.learning_rate=.inf", "expected a finite number, got inf"),
    ("model.rope_theta=-.inf", "expected a finite number, got -inf"),
    ("reward.on_error_reward=.nan", "expected a number, got nan"),
    ("algorithm.clip_ratio_c=.nan", "expected a number, got nan"),
])
def test_non_finite_numbers_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_infinity_stays_a_value_where_it_means_off():
    assert load_config(None, ["algorithm.clip_ratio_c=.inf"]).algorithm.clip_ratio_c == float("inf")


MOE = ["model.num_experts=4", "model.num_experts_per_tok=2"]


@pytest.mark.parametrize("overrides, message", [
    (["algorithm.routing_replay=replay"], r"needs a mixture-of-experts model \(model.num_experts > 0, got 0\)"),
    ([*MOE, "model.num_layers=1", "model.mlp_only_layers=[0]", "algorithm.routing_replay=record"], "needs a mixture-of-experts model"),
    ([*MOE, "algorithm.routing_replay=replay", "rollout.backend=jetstream"], "and rollout.backend: engine \\(got 'jetstream'\\)"),
    (["algorithm.routing_replay=on"], "'on' is not one of 'off', 'record', 'replay'"),
    (["rollout.dtype=float16"], "'float16' is not one of 'float32', 'bfloat16'"),
])
def test_routing_replay_and_generator_dtype_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_routing_replay_and_generator_dtype_load():
    config = load_config(None, [*MOE, "algorithm.routing_replay=replay", "rollout.dtype=bfloat16"])
    assert config.algorithm.routing_replay == "replay" and config.rollout.dtype == "bfloat16" and config.model.dtype == "float32"
    assert load_config(None).rollout.dtype is None  # null: the generator computes in model.dtype


def test_only_true_and_false_are_booleans_so_off_is_a_choice(tmp_path):
    path = tmp_path / "choices.yaml"
    path.write_text("bus: {interrupt: off}\nalgorithm: {routing_replay: off}\nrun: {save_rollouts: false, progress: True}\n")
    config = load_config(path, ["rollout.long_prompt=truncate"])
    assert config.bus.interrupt == "off" and config.algorithm.routing_replay == "off"
    assert config.run.save_rollouts is False and config.run.progress is True
    with pytest.raises(ConfigError, match="run.progress: expected true or false, got 'yes'"):
        load_config(None, ["run.progress=yes"])
