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
def test_every_bundled_recipe_validates(path):
    from audiorl.rl.config import recipe_kind
    from audiorl.rl.reward_model import RewardModelConfig, load_rm_config

    if recipe_kind(path) == "reward_model":
        assert isinstance(load_rm_config(path), RewardModelConfig)
    else:
        assert isinstance(load_recipe(path), RecipeConfig)


def test_overrides_and_interpolation():
    config = load_recipe(QUICKSTART, ["grpo.max_steps=7", "output_dir=/tmp/x", "rewards.0.weight=0.5"])
    assert config.grpo.max_steps == 7
    assert config.model.path == "/tmp/x/tiny_model"
    assert config.rewards[0].weight == 0.5 and config.rewards[0].name == "label_accuracy"


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["grpo.max_step=3"], r"unknown key 'grpo.max_step' \(did you mean 'max_steps'\?\)"),
        (["modle.path=/x"], r"unknown key 'modle' \(did you mean 'model'\?\)"),
        (["rollout.temprature=0.5"], r"unknown key 'rollout.temprature' \(did you mean 'temperature'\?\)"),
        (["rewards.0.wieght=2"], r"unknown key 'rewards.0.wieght' \(did you mean 'weight'\?\)"),
        (["grpo.max_steps=many"], r"'grpo.max_steps'.*many"),
        (["model.freeze_audio_encoder=perhaps"], r"'model.freeze_audio_encoder'"),
        (["grpo.loss_type=dapoo"], r"'grpo.loss_type' is 'dapoo' \(did you mean 'dapo'\?\)"),
        (["grpo.advantage=rlo"], r"'grpo.advantage' is 'rlo' \(did you mean 'rloo'\?\)"),
        (["rollout.backend=hff"], r"'rollout.backend' is 'hff' \(did you mean 'hf'\?\)"),
        (["rewards.0.name=label_acc"], r"unknown reward 'label_acc' \(did you mean 'label_accuracy'\?\)"),
        (["grpo.micro_batch_size=5"], r"'grpo.micro_batch_size' \(5\) must divide"),
        (["grpo.num_generations=1"], r"at least 2"),
        (["rollout.temperature=0"], r"GRPO needs sampled completions"),
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
    with pytest.raises(ConfigError, match=rf"{path}: unknown key 'grpo.max_stepz' \(did you mean 'max_steps'\?\)"):
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
        f"rc = main(['train', {QUICKSTART!r}, 'output_dir={out}', 'grpo.max_step=3']); "
        "print('RC', rc, 'MODEL_LOADED', any('modeling_qwen2_audio' in m for m in sys.modules))"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert "RC 2 MODEL_LOADED False" in proc.stdout, proc.stdout + proc.stderr
    assert "unknown key 'grpo.max_step' (did you mean 'max_steps'?)" in proc.stderr
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
        (["rollout.tis_cap=0.5"], "'rollout.tis_cap' must be >= 1"),
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
    assert "is an RL (SFT/GRPO) recipe: run it with `audiorl train`" in capsys.readouterr().err


def test_cli_lists_the_rewards(capsys):
    from audiorl.rl.cli import main

    assert main(["rewards"]) == 0
    out = capsys.readouterr().out
    for name in ("asr_correctness", "paralinguistic_accuracy", "mcq_accuracy", "preference_model", "llm_judge"):
        assert name in out
