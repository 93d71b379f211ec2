"""The Qwen2.5-Omni and Qwen3-Omni (MoE) quickstarts learn end to end through the CLI (transformers rollouts).

The shuffled-label SFT warm start leaves held-out accuracy at chance; GRPO, with every forward taking the
thinker's multimodal rotary positions, must lift held-out greedy accuracy to >= 0.95 with a last-10 mean
sampled reward >= 0.85 (the quickstart's bars; the other seeds are in BENCHMARKS.md).
"""

from __future__ import annotations

import json
import os

import pytest

from tests.test_learning import assert_meets_the_bar, run_recipe


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, n_steps, architecture",
    [
        ("quickstart_qwen2_5_omni", 60, "Qwen2_5OmniForConditionalGeneration"),
        ("quickstart_qwen3_omni", 120, "Qwen3OmniMoeForConditionalGeneration"),
    ],
)
def test_omni_quickstart_lifts_heldout_accuracy_and_sampled_reward(tmp_path_factory, recipe, n_steps, architecture):
    out, stdout = run_recipe(tmp_path_factory, recipe, "rollout.backend=hf")
    assert_meets_the_bar(out, "grpo", n_steps)
    assert "sampled reward grpo" in stdout
    with open(os.path.join(out, "merged", "config.json")) as f:  # the hub layout: the whole model, thinker inside
        assert json.load(f)["architectures"] == [architecture]
