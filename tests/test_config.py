"""Recipes: typed schema, overrides, and errors that name the key before anything heavy loads."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from audiorl.common.errors import ConfigError
from audiorl.rl.config import RecipeConfig, load_recipe

from tests.conftest import QUICKSTART

RECIPES_DIR = os.path.dirname(QUICKSTART)


def all_recipes() -> list[str]:
    found = []
    for root, _, files in os.walk(RECIPES_DIR):  # recursive: every recipe, not just the top level
        found += [os.path.join(root, f) for f in files if f.endswith((".yaml", ".yml"))]
    return sorted(found)


def test_there_are_recipes():
    assert QUICKSTART in all_recipes()


@pytest.mark.parametrize("path", all_recipes(), ids=os.path.basename)
def test_every_bundled_recipe_validates(path, capsys):
    """`audiorl validate` accepts every recipe; inputs that live on the user's machines are listed, not fatal."""
    from audiorl.common.errors import collect_missing_inputs
    from audiorl.rl.cli import main
    from audiorl.rl.config import recipe_kind
    from audiorl.rl.reward_model import RewardModelConfig, load_rm_config

    assert main(["validate", path]) == 0, capsys.readouterr().err
    with collect_missing_inputs() as missing:
        config = load_rm_config(path) if recipe_kind(path) == "reward_model" else load_recipe(path)
    assert isinstance(config, (RewardModelConfig, RecipeConfig))
    if os.path.basename(path).startswith("quickstart"):
        assert not missing  # the quickstarts build everything they need
    if missing:
        assert "not on this machine" in capsys.readouterr().out


def test_train_stops_on_missing_inputs_that_validate_lists(tmp_path):
    path = os.path.join(RECIPES_DIR, "step_audio2_rl.yaml")
    with pytest.raises(ConfigError, match="preference_model': model '/path/to/bt_reward_model' is not a Hugging Face checkpoint"):
        load_recipe(path)


def test_overrides_and_interpolation():
    config = load_recipe(QUICKSTART, ["stages.grpo.max_steps=7", "stages.1.learning_rate=0.01", "output_dir=/tmp/x", "rewards.0.weight=0.5"])
    grpo = config.stages[1]
    assert grpo.name == "grpo" and grpo.max_steps == 7 and grpo.learning_rate == 0.01
    assert config.model.path == "/tmp/x/tiny_model"
    assert config.rewards[0].weight == 0.5 and config.rewards[0].name == "label_accuracy"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["stages.grpo.max_step=3"], r"unknown key 'stages.1.max_step' \(did you mean 'max_steps'\?\)"),
        (["stages.grpp.max_steps=3"], r"no stage named 'grpp' \(did you mean 'grpo'\?\); stages: sft, grpo"),
        (["grpo.max_steps=3"], r"'grpo' is no longer a recipe key: it is now an `algorithm: grpo` entry of `stages:`"),
        (["stages.1.algorithm=grop"], r"'stages.1.algorithm' is 'grop' \(did you mean 'grpo'\?\)"),
        (["stages.1.rewards=[{nme: x}]"], r"unknown key 'stages.1.rewards.0.nme' \(did you mean 'name'\?\)"),
        (["stages.1.name=sft"], r"two stages are named 'sft'"),
        (["modle.path=/x"], r"unknown key 'modle' \(did you mean 'model'\?\)"),
        (["rollout.temprature=0.5"], r"unknown key 'rollout.temprature' \(did you mean 'temperature'\?\)"),
        (["rewards.0.wieght=2"], r"unknown key 'rewards.0.wieght' \(did you mean 'weight'\?\)"),
        (["stages.grpo.max_steps=many"], r"'stages.1.max_steps'.*many"),
        (["model.freeze_audio_encoder=perhaps"], r"'model.freeze_audio_encoder'"),
        (["stages.grpo.loss_aggregation=token_man"], r"'stages.1.loss_aggregation': unknown loss aggregation 'token_man' \(did you mean 'token_mean'\?\)"),
        (["stages.grpo.loss_aggregation=dapo"], r"'dapo', TRL's loss_type name: here that aggregation is 'token_mean'"),
        (["stages.grpo.advantage=rlo"], r"'stages.1.advantage': unknown advantage estimator 'rlo' \(did you mean 'rloo'\?\)"),
        (["stages.grpo.advantage=gae"], r"'gae', which needs a critic: use algorithm: ppo"),
        (["stages.grpo.policy_loss=my.module:missing"], r"policy loss 'my.module:missing' could not be imported"),
        (["stages.grpo.kl_in=both"], r"'stages.1.kl_in' is 'both'"),
        (["rollout.backend=hff"], r"'rollout.backend' is 'hff' \(did you mean 'hf'\?\)"),
        (["rewards.0.name=label_acc"], r"unknown reward 'label_acc' \(did you mean 'label_accuracy'\?\)"),
        (["stages.grpo.micro_batch_size=5"], r"'stages.1.micro_batch_size' \(5\) must divide"),
        (["stages.grpo.minibatches=3"], r"'stages.1.minibatches' \(3\) must divide"),
        (["stages.grpo.num_generations=1"], r"at least 2"),
        (["rollout.temperature=0"], r"grpo \(stages.1\) needs sampled completions"),
        (["stages.sft.epochs=-1"], r"'stages.0.epochs' must be positive, got -1"),
        (["stages.1.algorithm=[]"], r"'stages.1.algorithm' is '\[\]'.*choose one of"),  # found by the fuzz test
        (["stages.grpo.learning_rate=-1e-4"], r"'stages.1.learning_rate' must be positive"),
        (["stages.grpo.beta=-0.1"], r"'stages.1.beta' must be >= 0"),
        (["rewards=[]"], r"'stages.1' \(grpo\) needs rewards"),
        (["model.build_tiny=false", "model.path=/nonexistent/model"], r"'model.path': '/nonexistent/model' is not a Hugging Face model directory"),
        (["data.synthesize=null", "data.train=/nonexistent/train.jsonl"], r"'data.train': '/nonexistent/train.jsonl' does not exist"),
        (["noequals"], r"not of the form key=value"),
    ],
)
def test_bad_config_names_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICKSTART, overrides)


def test_unknown_key_in_yaml_file(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(open(QUICKSTART).read().replace("max_steps: 60", "max_stepz: 60"))
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'stages.1.max_stepz' \(did you mean 'max_steps'\?\)"):
        load_recipe(str(path))


def test_missing_required_key(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("model: {path: /x}\n")
    with pytest.raises(ConfigError, match="'output_dir' is required"):
        load_recipe(str(path))


def test_cli_fails_before_loading_any_model(tmp_path):
    out = tmp_path / "never"
    code = (
        "import sys; from audiorl.rl.cli import main; "
        f"rc = main(['train', {QUICKSTART!r}, 'output_dir={out}', 'stages.grpo.max_step=3']); "
        "print('RC', rc, 'MODEL_LOADED', any('modeling_qwen2_audio' in m for m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RC 2 MODEL_LOADED False" in proc.stdout, proc.stdout + proc.stderr
    assert "unknown key 'stages.1.max_step' (did you mean 'max_steps'?)" in proc.stderr
    assert not out.exists()


def test_rollout_backend_auto_is_hf_on_cpu_and_vllm_is_accepted():
    from audiorl.rollouts.base import resolve_backend

    assert load_recipe(QUICKSTART).rollout.backend == "auto"
    assert resolve_backend("auto") == "hf"  # the test machines have no GPU
    assert load_recipe(QUICKSTART, ["rollout.backend=vllm"]).rollout.vllm.mode == "colocate"


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["rollout.backend=vlm"], r"'rollout.backend' is 'vlm' \(did you mean 'vllm'\?\)"),
        (["rollout.backend=vllm", "rollout.vllm.mode=server"], "'rollout.vllm.servers' is empty"),
        (["rollout.vllm.mode=remote"], r"'rollout.vllm.mode' is 'remote'"),
        (["rollout.vllm.servers=[localhost:8000]"], "'localhost:8000' is not an http"),
        (["stages.grpo.tis_cap=0.5"], "'stages.1.tis_cap' must be >= 1"),
        (["rollout.tis_cap=2"], r"'rollout.tis_cap' is no longer a recipe key: it is now `tis_cap` of a grpo/ppo stage"),
        (["rollout.vllm.retries=-1"], "'rollout.vllm.retries' must be >= 0, got -1"),
        (["rollout.vllm.request_timeout_s=0"], "'rollout.vllm.request_timeout_s' must be positive"),
        (["rollout.vllm.sever=1"], r"rollout.vllm.sever.*did you mean 'servers'"),
    ],
)
def test_vllm_settings_are_checked_before_anything_loads(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICKSTART, overrides)


def test_cli_sends_each_recipe_kind_to_its_command(capsys):
    from audiorl.rl.cli import main

    assert main(["validate", "train_rm"]) == 0
    assert "train_rm: OK" in capsys.readouterr().out
    assert main(["train", "train_rm"]) == 2
    assert "'train_rm' is a reward-model recipe: run it with `audiorl train-rm`" in capsys.readouterr().err
    assert main(["train-rm", QUICKSTART]) == 2
    assert "is an RL (stages: sft, grpo, ppo, dpo) recipe: run it with `audiorl train`" in capsys.readouterr().err


def test_cli_lists_the_rewards(capsys):
    from audiorl.rl.cli import main

    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    for name in ("asr_correctness", "paralinguistic_accuracy", "mcq_accuracy", "preference_model", "llm_judge"):
        assert name in out


# --------------------------------------------------------- reward options and override paths
@pytest.mark.parametrize(
    "overrides,message",
    [
        # a typo in a built-in's option is refused (it used to fall into **_ and leave the default in place)
        (["rewards=[{name: think_length, kwargs: {max_lenght: 5}}]"],
         r"'?rewards.0.kwargs'?: reward 'think_length' has no parameter 'max_lenght' \(did you mean 'max_length'\?\).*its options: max_length, unit"),
        (["stages.grpo.rewards=[{name: cot_format}, {name: think_length, kwargs: {unitt: chars}}]"],
         r"stages.1.rewards.1.kwargs: reward 'think_length' has no parameter 'unitt' \(did you mean 'unit'\?\)"),
        (["rewards.0.kwargs={completions: [x]}"], r"rewards.0: reward 'label_accuracy': 'completions' cannot be given in kwargs"),
        (["rewards.1.kwargs={anything: 1}"], r"rewards.1.kwargs: reward 'cot_format' has no parameter 'anything'.*it takes no options"),
        # list indices in override paths
        (["rewards.5.weight=2"], r"'rewards.5' is out of range: 'rewards' has indices 0-1"),
        (["rewards.-5.weight=2"], r"'rewards.-5' is out of range: 'rewards' has indices 0-1"),
        (["rewards.-1.weight=2"], r"'rewards.-1' is out of range"),
        (["rewards.x.weight=2"], r"'rewards.x': a list takes an index 0-1, not 'x'"),
        (["stages.7.max_steps=2"], r"'stages.7' is out of range: 'stages' has indices 0-1"),
        (["stages.grpo.rewards.0.weight=2"], r"'stages.1.rewards' is not set, so it has no entry 0"),
        (["rewards.0.weight.x=2"], r"'rewards.0.weight' is a single value, so it has no 'x'"),
        (["data.synthesize=null", "data.synthesize.task=pitch"], r"'data.synthesize' is null, so it has no 'task'"),
        (["rewards..weight=2"], r"empty key part"),
    ],
)
def test_reward_options_and_override_paths_are_named(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICKSTART, overrides)


def test_stage_rewards_by_name_and_option_values_still_apply():
    config = load_recipe(QUICKSTART, ["stages.grpo.rewards=[{name: think_length, kwargs: {max_length: 5}}]", "stages.grpo.rewards.0.weight=0.5"])
    assert config.stages[1].rewards[0].weight == 0.5 and config.stages[1].rewards[0].kwargs == {"max_length": 5}


def test_typo_in_a_yaml_reward_entry_names_its_path(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(open(QUICKSTART).read().replace("  - name: cot_format ", "  - wieght: 2\n    name: cot_format "))
    with pytest.raises(ConfigError, match=r"unknown key 'rewards.1.wieght' \(did you mean 'weight'\?\); valid keys here: name, weight"):
        load_recipe(str(path))


# ----------------------------------------------------------------- ranges and choices
@pytest.mark.parametrize(
    "overrides,message",
    [
        (["rollout.top_k=-1"], r"'rollout.top_k' must be >= 0, got -1"),
        (["lora.alpha=0"], r"'lora.alpha' must be positive"),
        (["lora.dropout=1.0"], r"'lora.dropout' must be in \[0, 1\)"),
        (["model.device=tpu"], r"'model.device' is 'tpu' \(did you mean 'cpu'\?\); choose one of: auto, cpu, cuda, cuda:N"),
        (["model.device=cuda:x"], r"'model.device' is 'cuda:x'"),
        (["stages.grpo.learning_rate=.nan"], r"'stages.1.learning_rate' is nan: it must be a finite number"),
        (["stages.grpo.epsilon=-0.2"], r"'stages.1.epsilon' must be positive"),
        (["stages.grpo.warmup_steps=-2"], r"'stages.1.warmup_steps' must be >= 0, got -2"),
        (["rewards.0.weight=.inf"], r"'rewards.0.weight' is inf"),
        (["rewards.0.weight=1e9"], r"rewards.0: reward 'label_accuracy': weight 1e\+09 must be a finite number within"),
        (["eval.max_new_tokens=0"], r"'eval.max_new_tokens' must be positive \(or null"),
        (["data.max_train_samples=-3"], r"'data.max_train_samples' must be positive"),
        (["rollout.vllm.gpu_memory_utilization=1.5"], r"'rollout.vllm.gpu_memory_utilization' must be in \(0, 1\]"),
        (["output_dir=/etc/hostname"], r"'output_dir': '/etc/hostname' exists and is not a directory"),
        (["output_dir=/etc/hostname/run"], r"'output_dir': '/etc/hostname/run' cannot be created: '/etc/hostname' is a file"),
        (["output_dir=/proc/audiorl_test/run"], r"'output_dir': '/proc/audiorl_test/run' is not writable here"),
    ],
)
def test_numbers_and_choices_are_checked_before_load(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICKSTART, overrides)


def test_validate_lists_an_unwritable_output_dir_and_train_stops_on_it(capsys):
    from audiorl.rl.cli import main

    assert main(["validate", QUICKSTART, "output_dir=/proc/audiorl_test/run"]) == 0
    assert "not on this machine (`audiorl train` stops on it): 'output_dir': '/proc/audiorl_test/run' is not writable" in capsys.readouterr().out
    assert main(["train", QUICKSTART, "output_dir=/proc/audiorl_test/run"]) == 2
    assert "is not writable here" in capsys.readouterr().err


def test_make_data_refuses_empty_splits(tmp_path, capsys):
    from audiorl.data.synth import make_dataset
    from audiorl.rl.cli import main

    with pytest.raises(SystemExit):
        main(["make-data", str(tmp_path / "d"), "--n-train", "0"])
    assert "--n-train: must be at least 1, got 0" in capsys.readouterr().err
    with pytest.raises(ConfigError, match=r"n_eval must be a positive number of rows, got 0"):
        make_dataset(str(tmp_path / "d"), n_train=2, n_eval=0)
    assert not (tmp_path / "d").exists()


def test_cli_help_explains_the_commands_and_lists_every_key(capsys):
    from audiorl.rl.cli import main

    for command in ("train", "validate", "train-rm", "make-tiny", "make-data"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        out = " ".join(capsys.readouterr().out.split())
        assert "--list-keys" in out or command in ("make-tiny", "make-data"), command
        if command in ("make-tiny", "make-data"):
            assert "directory to write" in out and "seed of the" in out
    assert main(["validate", "--list-keys"]) == 0
    keys = capsys.readouterr().out
    for key in ("model.device", "rollout.top_k", "overwrite", "rewards.N.on_error", "stages.N.epsilon", "stages.N.critic.value_clip"):
        assert f"\n{key} " in f"\n{keys}", key
    assert "auto (cuda if available) | cpu | cuda | cuda:N" in keys  # the schema's comments are the documentation
    assert main(["validate"]) == 2
    assert "needs a recipe" in capsys.readouterr().err
    assert main(["rewards"]) == 0
    assert "options (kwargs): max_length, unit" in capsys.readouterr().out


def test_trls_vllm_version_warning_is_silenced():
    import warnings

    from audiorl.rl.cli import quiet_warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_warnings()
        warnings.warn("TRL currently supports vLLM versions from 0.22.0 to 0.31.0. You have version 0.32.0 installed.", UserWarning)
        warnings.warn("an unrelated warning", UserWarning)
    assert [str(w.message) for w in caught] == ["an unrelated warning"]


def test_waiting_for_a_closed_rollout_server_says_what_it_waits_for(caplog, monkeypatch):
    import logging
    import socket

    from audiorl.common.errors import RolloutServerError
    from audiorl.rollouts import remote

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(remote, "WAIT_REPORT_S", 0.5)
    with caplog.at_level(logging.INFO, logger="audiorl"), pytest.raises(RolloutServerError, match="not ready after 2 s"):
        remote.ServerClient(f"http://127.0.0.1:{port}", timeout_s=1.0, retries=0).wait_ready(2.0)
    waits = [r.getMessage() for r in caplog.records if "waiting for the rollout server" in r.getMessage()]
    assert waits and f"http://127.0.0.1:{port}" in waits[0] and "rollout.vllm.startup_timeout_s" in waits[0]


@pytest.mark.parametrize(
    "text,message",
    [
        ("a: [\n", r"is not valid YAML: while parsing a flow node"),
        ("output_dir: /tmp/x\nrewards: [label_accuracy]\n", r"'rewards.0' must be a mapping such as \{name: label_accuracy\}"),
        ("output_dir: /tmp/x\nrewards: [{name: cot_format, kwargs: [1]}]\n", r"'rewards.0.kwargs' must be a mapping of option: value"),
        ("output_dir: /tmp/x\nstages: {a: 1}\n", r"'stages' has the wrong shape"),
        ("output_dir: /tmp/x\nmodel: 3\n", r"'model' has the wrong shape"),
        ("output_dir: /tmp/x\nmodel: {path: /x}\ndata: {train: /x.jsonl}\nstages: [{algorithm: grpo, rewards: [x]}]\n", r"'stages.0.rewards.0' must be a mapping such as \{name: x\}"),
    ],
)
def test_recipe_files_of_the_wrong_shape_are_named(tmp_path, text, message):
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_recipe(str(path))
