"""The tiny Qwen2-Audio and the AudioLM interface: layout, prompts, audio embedding, LoRA targets."""

from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest
import torch
from audiorl.common.errors import DataError
from audiorl.data.audio import AudioStore
from audiorl.data.synth import tone
from audiorl.model import find_module
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.model.tiny import build_tiny_qwen2_audio
from safetensors import safe_open


def sha(path: str) -> str:
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def messages(n_audio: int, text: str = "Is the pitch of this tone high or low?") -> list[dict]:
    content = [{"type": "audio", "audio": f"clip{i}.wav"} for i in range(n_audio)] + [{"type": "text", "text": text}]
    return [{"role": "user", "content": content}]


@pytest.fixture(scope="module")
def clips():
    rng = np.random.default_rng(0)
    store = AudioStore()
    waves = [tone(300.0, 0.7, rng), tone(1500.0, 1.3, rng), tone(800.0, 2.0, rng)]
    return store, [store.add_array(w) for w in waves], waves


def test_tiny_build_is_deterministic_and_offline(tiny_model_dir, tmp_path):
    again = build_tiny_qwen2_audio(str(tmp_path / "again"), seed=0)
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        assert sha(os.path.join(tiny_model_dir, name)) == sha(os.path.join(again, name)), name
    other = build_tiny_qwen2_audio(str(tmp_path / "other"), seed=1)
    assert sha(os.path.join(other, "model.safetensors")) != sha(os.path.join(tiny_model_dir, "model.safetensors"))


def test_tiny_checkpoint_is_in_hub_layout(tiny_model_dir):
    with safe_open(os.path.join(tiny_model_dir, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    prefixes = ("language_model.model.", "language_model.lm_head.", "audio_tower.", "multi_modal_projector.")
    assert all(k.startswith(prefixes) for k in keys), [k for k in keys if not k.startswith(prefixes)]
    assert not any(k.startswith(("model.", "language_model.model.model.")) for k in keys)
    assert any(k.startswith("audio_tower.layers.") for k in keys)
    config = json.load(open(os.path.join(tiny_model_dir, "config.json")))
    text = config["text_config"]
    assert text["hidden_size"] // text["num_attention_heads"] >= 64  # vLLM's CPU attention needs head_dim >= 64


def test_transformers_reloads_the_same_weights(tiny_lm, tiny_model_dir):
    state = tiny_lm.model.state_dict()
    from audiorl.model.qwen2_audio import to_hub_key

    with safe_open(os.path.join(tiny_model_dir, "model.safetensors"), "pt") as f:
        for key, value in state.items():
            assert torch.equal(f.get_tensor(to_hub_key(key)), value), key


def test_prompt_ids_match_the_processor(tiny_lm, clips):
    store, clip_list, waves = clips
    for n in (1, 2):
        text = tiny_lm.render(messages(n))
        expected = tiny_lm.processor(text=text, audio=waves[:n], return_tensors="pt")["input_ids"][0].tolist()
        assert tiny_lm.prompt_ids(messages(n), clip_list[:n]) == expected
    with pytest.raises(DataError, match="2 audio parts but 1 clips"):
        tiny_lm.prompt_ids(messages(2), clip_list[:1])


def test_too_long_audio_is_an_error_not_a_silent_cut(tiny_lm):
    store = AudioStore()
    long_clip = store.add_array(np.zeros(31 * 16000, dtype=np.float32), source="long.wav")
    with pytest.raises(DataError, match=r"'long.wav' is 31.0 s long; this model reads at most 30 s"):
        tiny_lm.prompt_ids(messages(1), [long_clip])


def test_embedding_path_equals_the_native_audio_forward(tiny_lm, clips):
    store, clip_list, waves = clips
    model = tiny_lm.model
    rows = [messages(1), messages(2)]
    row_clips = [[clip_list[2]], clip_list[:2]]
    texts = [tiny_lm.render(m) for m in rows]
    native_inputs = tiny_lm.processor(text=texts, audio=[waves[2], waves[0], waves[1]], return_tensors="pt", padding=True)
    embedder = AudioEmbedder(tiny_lm, store)
    with torch.no_grad():
        native = model(**native_inputs).logits
        embeds = embedder.inputs_embeds(model, native_inputs["input_ids"], row_clips)
        ours = model(inputs_embeds=embeds, attention_mask=native_inputs["attention_mask"]).logits
    mask = native_inputs["attention_mask"].bool()
    assert torch.allclose(native[mask], ours[mask], atol=1e-5)


def test_encoder_runs_once_per_unique_clip_and_is_cached(tiny_lm, clips):
    store, clip_list, _ = clips
    embedder = AudioEmbedder(tiny_lm, store)
    calls = []
    tower = tiny_lm.audio_encoder()
    handle = tower.register_forward_hook(lambda mod, args, out: calls.append(args[0].shape[0]))
    try:
        with torch.no_grad():
            out = embedder.audio_embeds(tiny_lm.model, [clip_list[0]] * 8 + [clip_list[1]] * 8)
            assert calls == [2]  # one batched call, two unique clips
            embedder.audio_embeds(tiny_lm.model, [clip_list[1], clip_list[0]])
            assert calls == [2]  # frozen encoder: served from the cache
    finally:
        handle.remove()
    assert len(out) == 16 and torch.equal(out[0], out[7])
    assert embedder.stats == {"encoder_calls": 1, "clips_encoded": 2, "cache_hits": 2}


def test_trainable_encoder_is_recomputed_with_grad(tiny_lm, clips):
    store, clip_list, _ = clips
    embedder = AudioEmbedder(tiny_lm, store)
    tower = tiny_lm.audio_encoder()
    tower.requires_grad_(True)
    try:
        with torch.no_grad():
            embedder.audio_embeds(tiny_lm.model, clip_list[:1])
            embedder.audio_embeds(tiny_lm.model, clip_list[:1])
        assert embedder.stats["clips_encoded"] == 1  # reused without grad within a step
        out = embedder.audio_embeds(tiny_lm.model, clip_list[:1])
        assert out[0].requires_grad and embedder.stats["clips_encoded"] == 2
        with torch.no_grad():
            embedder.audio_embeds(tiny_lm.model, clip_list[:1], role="reference")
        assert embedder.stats["clips_encoded"] == 3  # another role's weights: never served the policy's outputs
        embedder.weights_changed("policy")
        with torch.no_grad():
            embedder.audio_embeds(tiny_lm.model, clip_list[:1])
            embedder.audio_embeds(tiny_lm.model, clip_list[:1], role="reference")
        assert embedder.stats["clips_encoded"] == 4  # a new step sees the updated encoder; the reference's stays
    finally:
        tower.requires_grad_(False)


def test_placeholders_without_audio_are_refused(tiny_lm, clips):
    store, clip_list, _ = clips
    ids = torch.tensor([tiny_lm.prompt_ids(messages(1), clip_list[:1])])
    with pytest.raises(DataError, match="no audio was given"):
        tiny_lm.embed(tiny_lm.model, ids, [])


def test_special_input_tokens_are_the_audio_tokens(tiny_lm):
    tok = tiny_lm.tokenizer
    names = {tok.convert_ids_to_tokens(i) for i in tiny_lm.special_input_token_ids}
    assert names == {"<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"}
    assert tiny_lm.audio_placeholder_id == tok.convert_tokens_to_ids("<|AUDIO|>")
    # reasoning tags survive decoding with skip_special_tokens (format rewards need them)
    ids = tok("<think>a</think><answer>high</answer>", add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=True) == "<think>a</think><answer>high</answer>"


def test_lora_targets_only_the_language_model(tiny_model_dir):
    from audiorl.model import load_audio_lm
    from peft import LoraConfig, get_peft_model

    lm = load_audio_lm(tiny_model_dir)
    model = get_peft_model(lm.model, LoraConfig(r=4, target_modules=lm.lora_target_regex))
    lora_modules = [n for n, _ in model.named_modules() if n.endswith("lora_A")]
    assert lora_modules and all("language_model" in n for n in lora_modules)
    assert not any("audio_tower" in n for n in lora_modules)
    per_layer = {n.split(".")[-2] for n in lora_modules}
    assert per_layer == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert find_module(model, "multi_modal_projector") is not None


def test_silent_and_empty_clips_give_finite_embeddings(tiny_lm, tmp_path):
    import soundfile as sf

    sf.write(tmp_path / "silent.wav", np.zeros(16000, dtype=np.float32), 16000)
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    store = AudioStore()
    clips = [store.add_file(tmp_path / "silent.wav"), store.add_file(tmp_path / "empty.wav")]
    embedder = AudioEmbedder(tiny_lm, store)
    with torch.no_grad():
        out = embedder.audio_embeds(tiny_lm.model, clips)
    assert [o.shape[0] for o in out] == [tiny_lm.audio_token_count(c.num_samples) for c in clips]
    assert all(torch.isfinite(o).all() for o in out)


def test_merged_state_dict_equals_merge_and_unload_without_touching_the_model(tiny_model_dir):
    import copy

    from audiorl.model import load_audio_lm
    from peft import LoraConfig, get_peft_model

    lm = load_audio_lm(tiny_model_dir)
    peft = get_peft_model(
        lm.model, LoraConfig(r=4, lora_alpha=8, target_modules=lm.lora_target_regex, modules_to_save=[lm.projector_module])
    )
    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in peft.named_parameters():
            if "lora_B" in name or "modules_to_save" in name:
                p.add_(torch.randn_like(p) * 0.1)
    before = {k: v.clone() for k, v in peft.state_dict().items()}
    hub = lm.hub_state_dict(peft)
    trainable = lm.hub_state_dict(peft, trainable_only=True)
    assert all(torch.equal(v, peft.state_dict()[k]) for k, v in before.items())  # nothing merged in place
    reference = lm.hub_state_dict(copy.deepcopy(peft).merge_and_unload())
    assert hub.keys() == reference.keys()
    assert max((hub[k] - reference[k]).abs().max().item() for k in hub) < 1e-5
    projector = {k for k in hub if k.startswith("multi_modal_projector.")}
    assert projector <= trainable.keys() and len(trainable) == 2 * 7 + len(projector)
    assert not any(k.startswith("audio_tower.") for k in trainable)
