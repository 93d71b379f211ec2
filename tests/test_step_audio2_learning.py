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

import numpy as np
import pytest

from tests.test_end_to_end import read_metrics
from tests.test_learning import run_recipe


@pytest.fixture(scope="module", params=["hf", "vllm"])
def learned(request, tmp_path_factory):
    return run_recipe(tmp_path_factory, "quickstart_step_audio2", f"rollout.backend={request.param}")


@pytest.mark.slow
def test_step_audio2_quickstart_lifts_heldout_accuracy_and_sampled_reward(learned):
    out, stdout = learned
    rows = read_metrics(out)
    evals = [r for r in rows if r["stage"] == "eval"]
    steps = [r for r in rows if r["stage"] == "grpo"]
    assert evals[0]["step"] == 0 and 0.35 <= evals[0]["eval/label_accuracy"] <= 0.65  # shuffled-label SFT: chance
    assert evals[0]["eval/cot_format"] == 1.0  # ... but the format is learnt
    assert len(steps) == 60 and all(math.isfinite(r["reward"]) for r in steps)
    assert evals[-1]["step"] == 60 and evals[-1]["eval/label_accuracy"] >= 0.95
    first, last = np.mean([r["reward"] for r in steps[:10]]), np.mean([r["reward"] for r in steps[-10:]])
    assert last >= 0.85 and last > first and "sampled reward grpo" in stdout


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
