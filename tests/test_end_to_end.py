"""The real CLI end to end: the quickstart learns, runs reproduce, failures lose nothing."""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import pytest
from audiorl.rl.config import load_recipe
from audiorl.rl.train import train

from tests.conftest import AUDIORL, QUICKSTART, quick_overrides


def read_metrics(output_dir: str) -> list[dict]:
    with open(os.path.join(output_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


@pytest.mark.slow
def test_quickstart_lifts_heldout_accuracy_and_reward(quickstart_run):
    out, stdout = quickstart_run
    rows = read_metrics(out)
    evals = [r for r in rows if r["stage"] == "eval"]
    grpo = [r for r in rows if r["stage"] == "grpo"]
    assert evals[0]["step"] == 0 and 0.35 <= evals[0]["eval/label_accuracy"] <= 0.65  # SFT on shuffled labels: chance
    assert evals[-1]["eval/label_accuracy"] >= 0.95
    assert len(grpo) == 60 and all(list(r)[2] == "reward" for r in grpo)
    assert np.mean([r["reward"] for r in grpo[-10:]]) >= 0.85
    assert rows[-1] is evals[-1] or rows[-1] == evals[-1]
    assert "before" in stdout and "after" in stdout and "eval/label_accuracy" in stdout


@pytest.mark.slow
def test_quickstart_writes_plot_adapter_and_merged_checkpoint(quickstart_run):
    out, _ = quickstart_run
    with open(os.path.join(out, "reward_curve.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    adapter = json.load(open(os.path.join(out, "adapter", "adapter_config.json")))
    assert adapter["base_model_name_or_path"] == os.path.join(out, "sft_model")
    assert os.path.isfile(os.path.join(out, "adapter", "adapter_model.safetensors"))
    for name in ("merged", "sft_model"):
        assert {"config.json", "model.safetensors", "tokenizer.json", "processor_config.json"} <= set(os.listdir(os.path.join(out, name)))
    assert not [n for n in os.listdir(out) if ".tmp-" in n or ".old-" in n]


@pytest.mark.slow
def test_merged_checkpoint_reproduces_the_final_accuracy(quickstart_run, tmp_path):
    out, _ = quickstart_run
    summary = json.load(open(os.path.join(out, "summary.json")))
    config = load_recipe(
        QUICKSTART,
        [f"output_dir={tmp_path}", f"model.path={out}/merged", "model.build_tiny=false", "stages.sft.enabled=false",
         "stages.grpo.enabled=false", f"data.train={out}/data/train.jsonl", f"data.eval={out}/data/eval.jsonl", "data.synthesize=null"],
    )
    again = train(config)
    assert again["after"]["eval/label_accuracy"] == summary["after"]["eval/label_accuracy"] >= 0.95


@pytest.mark.slow
def test_quickstart_encodes_each_clip_once(quickstart_run):
    out, _ = quickstart_run
    summary = json.load(open(os.path.join(out, "summary.json")))
    # 256 train + 64 eval clips; SFT (2 epochs), 60 GRPO steps of 8 x 8 samples and 7 evaluations reuse them
    assert summary["audio_encoder"]["clips_encoded"] == 320


def _comparable(rows: list[dict]) -> list[dict]:
    timing = ("step_time", "train_runtime", "train_samples_per_second", "train_steps_per_second")
    return [{k: v for k, v in r.items() if k not in timing and not k.startswith("timing/")} for r in rows]


def test_same_seed_same_run(tmp_path, tiny_model_dir, pitch_data):
    runs = []
    for name in ("a", "b"):
        overrides = quick_overrides(
            tmp_path / name, tiny_model_dir, pitch_data, **{"stages.grpo.max_steps": 3, "stages.grpo.beta": 0.04, "stages.sft.logging_steps": 1}
        )
        train(load_recipe(QUICKSTART, overrides))
        runs.append(_comparable(read_metrics(str(tmp_path / name / "run"))))
    assert runs[0] == runs[1]
    assert any(r["stage"] == "grpo" for r in runs[0]) and any(r["stage"] == "sft" for r in runs[0])


def test_failing_reward_is_named_and_nothing_half_written(tmp_path, tiny_model_dir, pitch_data):
    overrides = quick_overrides(tmp_path, tiny_model_dir, pitch_data, **{"rewards.1.name": "tests.reward_plugins:fails_on_row_3"})
    repo = os.path.dirname(os.path.dirname(QUICKSTART))
    env = {**os.environ, "PYTHONPATH": repo}  # the plugin lives in tests/
    proc = subprocess.run([AUDIORL, "train", QUICKSTART, *overrides], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "reward 'fails_on_row_3' raised RuntimeError: row 3 is unscorable on sample 3 (completion '" in proc.stderr
    out = tmp_path / "run"
    assert not (out / "merged").exists() and not (out / "adapter").exists()
    assert not [n for n in os.listdir(out) if ".tmp-" in n]
