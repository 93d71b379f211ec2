"""Checkpoints audiorl writes (make-tiny, and trained ones: see test_end_to_end) load in real vLLM."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from tests.test_model import messages

HERE = os.path.dirname(os.path.abspath(__file__))


def vllm_greedy(model_dir: str, wavs: list[str], max_tokens: int) -> list[list[int]]:
    env = {**os.environ, "PYTHONPATH": os.path.dirname(HERE)}
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "vllm_greedy.py"), model_dir, str(max_tokens), *wavs],
        capture_output=True, text=True, timeout=600, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("[")]


def transformers_greedy(model_dir: str, wavs: list[str], max_tokens: int) -> list[list[int]]:
    from audiorl.data.audio import load_audio
    from audiorl.model import load_audio_lm

    lm = load_audio_lm(model_dir)
    out = []
    for wav in wavs:
        inputs = lm.processor(text=lm.render(messages(1)), audio=[load_audio(wav)], return_tensors="pt")
        with torch.no_grad():
            ids = lm.model.generate(**inputs, do_sample=False, max_new_tokens=max_tokens, min_new_tokens=max_tokens, eos_token_id=None)
        out.append(ids[0, inputs["input_ids"].shape[1] :].tolist())
    return out


def assert_vllm_matches_transformers(model_dir: str, wavs: list[str], max_tokens: int = 16) -> None:
    import vllm  # noqa: F401 - without vLLM this fails, never skips: `scripts/install.sh --test` installs it

    expected = transformers_greedy(model_dir, wavs, max_tokens)
    assert len({tuple(e) for e in expected}) > 1, "the audio should change the output"
    assert vllm_greedy(model_dir, wavs, max_tokens) == expected


def test_make_tiny_output_loads_in_vllm_and_matches_transformers(tiny_model_dir, pitch_data):
    base = os.path.dirname(pitch_data["eval"])
    wavs = [os.path.join(base, "audio", f) for f in sorted(os.listdir(os.path.join(base, "audio")))[:4]]
    assert_vllm_matches_transformers(tiny_model_dir, wavs)


@pytest.mark.slow
def test_trained_merged_checkpoint_loads_in_vllm(quickstart_run):
    out, _ = quickstart_run
    rows = [json.loads(line) for line in open(os.path.join(out, "data", "eval.jsonl"))]
    picked = [r for r in rows if r["label"] == "high"][:2] + [r for r in rows if r["label"] == "low"][:2]
    wavs = [os.path.join(out, "data", r["audio"]) for r in picked]
    assert_vllm_matches_transformers(os.path.join(out, "merged"), wavs)
