"""A recipe is a list of stages: run in order, each from the previous one's weights, each with its own rewards.

The Step-Audio 2 schedule on the tiny model (PPO with the think-length reward -> PPO with a learned
reward model -> GRPO) runs end to end through the CLI, after `audiorl train-rm` made its reward model.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import torch
from audiorl.common.errors import ConfigError
from audiorl.rl.config import load_recipe
from audiorl.rl.train import RLRecipe
from safetensors.torch import load_file

from tests.conftest import AUDIORL, QUICKSTART, quick_overrides
from tests.test_end_to_end import read_metrics

RECIPES = os.path.dirname(QUICKSTART)


@pytest.fixture(scope="module")
def step_audio2_tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("sa2") / "run"
    rm = subprocess.run(
        [AUDIORL, "train-rm", os.path.join(RECIPES, "train_rm.yaml"), f"output_dir={out}/rm"], capture_output=True, text=True, timeout=900
    )
    assert rm.returncode == 0, rm.stderr[-3000:]
    proc = subprocess.run(
        [AUDIORL, "train", os.path.join(RECIPES, "step_audio2_rl_tiny.yaml"), f"output_dir={out}"], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(out)


@pytest.mark.slow
def test_step_audio2_schedule_runs_its_stages_in_order_with_their_own_rewards(step_audio2_tiny):
    out = step_audio2_tiny
    rows = [r for r in read_metrics(out) if r["stage"] not in ("eval", "sft")]
    stages = [r["stage"] for r in rows]
    assert stages == ["ppo_think"] * 3 + ["ppo_rm"] * 3 + ["grpo"] * 3
    assert [r["step"] for r in rows] == list(range(1, 10))  # one step counter across the stages
    for r in rows:
        rewards = {k.split("/")[1] for k in r if k.startswith("rewards/") and k.endswith("/mean")}
        expected = {"ppo_think": {"think_length"}, "ppo_rm": {"preference_model"}, "grpo": {"label_accuracy", "cot_format"}}[r["stage"]]
        assert rewards == expected
    assert all("value_loss" in r for r in rows if r["stage"].startswith("ppo")) and not any("value_loss" in r for r in rows if r["stage"] == "grpo")
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert list(summary["stages"]) == ["ppo_think", "ppo_rm", "grpo"]
    assert {"before", "after_ppo_think", "after_ppo_rm", "after"} <= set(summary["evals"])


@pytest.mark.slow
def test_each_stage_starts_from_the_previous_stages_weights(step_audio2_tiny):
    out = step_audio2_tiny
    models = ["tiny_model", "sft_model", "ppo_think_model", "ppo_rm_model", "merged"]
    weights = [load_file(os.path.join(out, m, "model.safetensors")) for m in models]
    key = next(k for k in weights[0] if k.startswith("language_model.") and "layers.0.self_attn.q_proj.weight" in k)
    for before, after in zip(weights, weights[1:]):  # every stage changed the language model
        assert not torch.equal(before[key], after[key])
    adapter = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert adapter["base_model_name_or_path"] == os.path.join(out, "ppo_rm_model")  # the last stage's adapter sits on its base


def test_stage_order_is_data_and_disabled_stages_are_skipped(tmp_path, tiny_model_dir, pitch_data):
    overrides = quick_overrides(tmp_path, tiny_model_dir, pitch_data) + [
        "stages=[{algorithm: grpo, name: first, max_steps: 1, prompts_per_step: 2, num_generations: 2, micro_batch_size: 4},"
        " {algorithm: sft, epochs: 1, enabled: false},"
        " {algorithm: grpo, name: second, max_steps: 2, prompts_per_step: 2, num_generations: 2, micro_batch_size: 4}]",
    ]
    overrides = [o for o in overrides if not o.startswith(("stages.sft.", "stages.grpo."))]
    recipe = RLRecipe(load_recipe(QUICKSTART, overrides))
    recipe.setup()
    try:
        recipe.train()
    finally:
        recipe.cleanup()
    assert [s for s, _, _ in recipe.stage_spans] == ["first", "second"]
    assert [r["stage"] for r in recipe.metrics.rows if r["stage"] != "eval"] == ["first", "second", "second"]
    assert os.path.isdir(tmp_path / "run" / "first_model") and not (tmp_path / "run" / "sft_model").exists()
    assert recipe.lm.model.peft_config["default"].base_model_name_or_path == str(tmp_path / "run" / "first_model")


@pytest.mark.parametrize(
    "stages,message",
    [
        ("[{algorithm: grpo}, {algorithm: grpo}]", r"two stages are named 'grpo'"),
        ("[{max_steps: 3}]", r"'stages.0.algorithm' is required"),
        ("[{algorithm: ppo, critic: {learning_rte: 1}}]", r"unknown key 'stages.0.critic.learning_rte' \(did you mean 'learning_rate'\?\)"),
        ("[{algorithm: dpo, source: offline}]", r"'stages.0.pairs' is required for source: offline"),
        ("[{algorithm: dpo, loss: dpo_sigmod}]", r"unknown preference loss 'dpo_sigmod' \(did you mean 'dpo_sigmoid'\?\)"),
        ("[{algorithm: dpo, loss_on: [text, speech]}]", r"'stages.0.loss_on' is 'speech'"),
        ("[{algorithm: ppo, num_generations: 1, prompts_per_step: 3, minibatches: 2}]", r"'stages.0.minibatches' \(2\) must divide"),
        ("[{algorithm: ppo, critic: {value_loss: huber}}]", r"unknown value loss 'huber'"),
        ("[{algorithm: grpo, name: 'a b'}]", r"'stages.0.name' is 'a b'"),
    ],
)
def test_bad_stages_are_named(stages, message):
    with pytest.raises(ConfigError, match=message):
        load_recipe(QUICKSTART, [f"stages={stages}"])
