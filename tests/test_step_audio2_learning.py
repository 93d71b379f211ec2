"""The Step-Audio 2 quickstart learns end to end through the CLI (think mode), with transformers and vLLM rollouts.

The shuffled-label SFT warm start teaches the format but leaves held-out accuracy at chance; GRPO
must then lift held-out greedy accuracy to >= 0.95 with a last-10 mean sampled reward >= 0.85 (the
quickstart's bars; the other seeds are in BENCHMARKS.md). The replies open with think mode's prefix
and the merged save is in the release layout.
"""

from __future__ import annotations

import json
import math
import os

import pytest

from tests.test_learning import assert_meets_the_bar, run_recipe


@pytest.fixture(scope="module", params=["hf", "vllm"])
def learned(request, tmp_path_factory):
    return run_recipe(tmp_path_factory, "quickstart_step_audio2", f"rollout.backend={request.param}")


@pytest.mark.slow
def test_step_audio2_quickstart_lifts_heldout_accuracy_and_sampled_reward(learned):
    out, stdout = learned
    evals, steps, _, _ = assert_meets_the_bar(out, "grpo", n_steps=60)
    assert evals[0]["eval/cot_format"] == 1.0  # the shuffled-label SFT learns the format
    assert all(math.isfinite(r["reward"]) for r in steps) and "sampled reward grpo" in stdout


@pytest.mark.slow
def test_step_audio2_quickstart_replies_open_with_the_think_prefix_and_save_the_release_layout(learned):
    out, _ = learned
    with open(os.path.join(out, "eval_samples_after.jsonl")) as f:
        samples = [json.loads(line) for line in f]
    assert samples and all(s["completion"].startswith("<think>\n") for s in samples)
    from audiorl.model import load_audio_lm

    merged = load_audio_lm(os.path.join(out, "merged"))
    assert merged.family == "step_audio_2"
    with open(os.path.join(out, "merged", "config.json")) as f:
        assert json.load(f)["architectures"] == ["StepAudio2ForCausalLM"]
