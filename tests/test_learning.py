"""Every algorithm learns for real: the PPO and DPO quickstarts through the CLI, with the quickstart's bars.

Each starts from the shuffled-label SFT warm start (held-out accuracy at chance) and must lift
held-out greedy accuracy to >= 0.95 with a mean sampled reward of the last 10 steps >= 0.85; each
writes metrics.jsonl (the accuracy under a key with "accuracy", the sampled reward under
"reward"), the before/after table, the plot and the merged checkpoint.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest

from tests.conftest import AUDIORL, QUICKSTART
from tests.test_end_to_end import read_metrics

RECIPES = os.path.dirname(QUICKSTART)


def run_recipe(tmp_path_factory, name: str, *overrides: str) -> tuple[str, str]:
    out = tmp_path_factory.mktemp(name) / "run"
    proc = subprocess.run(
        [AUDIORL, "train", os.path.join(RECIPES, f"{name}.yaml"), f"output_dir={out}", *overrides], capture_output=True, text=True, timeout=1800
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return str(out), proc.stdout


def assert_meets_the_bar(out: str, stage: str, n_steps: int | None = None) -> tuple[list[dict], list[dict], str, float]:
    """The quickstarts' bar on a run's metrics: held-out greedy accuracy from chance (the shuffled-label SFT
    warm start) to >= 0.95, and a last-10 mean sampled reward >= 0.85 above the first 10's. ``n_steps``: the
    stage's step count, also that of the last evaluation. Returns the evaluations, the stage's steps, the
    accuracy key and the last-10 mean."""
    rows = read_metrics(out)
    evals = [r for r in rows if r["stage"] == "eval"]
    steps = [r for r in rows if r["stage"] == stage]
    accuracy = next(k for k in evals[0] if "accuracy" in k)
    assert evals[0]["step"] == 0 and 0.35 <= evals[0][accuracy] <= 0.65  # SFT on shuffled labels: chance
    assert evals[-1][accuracy] >= 0.95
    if n_steps is not None:
        assert len(steps) == n_steps and evals[-1]["step"] == n_steps
    first, last = np.mean([r["reward"] for r in steps[:10]]), np.mean([r["reward"] for r in steps[-10:]])
    assert last >= 0.85 and last > first
    return evals, steps, accuracy, last


@pytest.fixture(scope="module", params=["quickstart_ppo", "quickstart_dpo", "quickstart_dpo_offline"])
def learned(request, tmp_path_factory):
    out, stdout = run_recipe(tmp_path_factory, request.param)
    return request.param, out, stdout


@pytest.mark.slow
def test_heldout_accuracy_and_sampled_reward_rise(learned):
    name, out, stdout = learned
    stage = {"quickstart_ppo": "ppo"}.get(name, "dpo")
    evals, steps, accuracy, last = assert_meets_the_bar(out, stage)
    assert all("reward" in r for r in steps)
    assert "before" in stdout and "after" in stdout and accuracy in stdout and f"sampled reward {stage}" in stdout
    summary = json.load(open(os.path.join(out, "summary.json")))
    assert summary["after"][accuracy] == evals[-1][accuracy] and summary["sampled_reward_last10"] == pytest.approx(last)


@pytest.mark.slow
def test_writes_plot_and_merged_checkpoint(learned):
    _, out, _ = learned
    with open(os.path.join(out, "reward_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    for name in ("merged", "sft_model"):
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(os.listdir(os.path.join(out, name)))
    adapter = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert adapter["base_model_name_or_path"] == os.path.join(out, "sft_model")


@pytest.mark.slow
def test_algorithm_metrics_are_logged(learned):
    name, out, _ = learned
    rows = read_metrics(out)
    if name == "quickstart_ppo":
        ppo = [r for r in rows if r["stage"] == "ppo"]
        for key in ("value_loss", "explained_variance", "clip_ratio/region_mean", "value_clip_ratio", "kl", "kl_penalty", "entropy", "critic/grad_norm"):
            assert any(key in r for r in ppo), key
    else:
        dpo = [r for r in rows if r["stage"] == "dpo"]
        assert all(0.0 <= r["dpo/accuracy"] <= 1.0 for r in dpo if "dpo/accuracy" in r)
        if name == "quickstart_dpo":  # online: the groups whose rewards tie give no pair, and are counted
            assert all(r["dpo/pairs"] + r["dpo/skipped_groups"] == 8 for r in dpo)
            assert sum(r["dpo/skipped_groups"] for r in dpo) > 0
        else:  # offline: the same pairs come back each epoch, and the policy has learnt to prefer the chosen ones
            assert np.mean([r["dpo/margin"] for r in dpo[-10:]]) > 0 and np.mean([r["dpo/accuracy"] for r in dpo[-10:]]) > 0.9
