"""Step-Audio 2 behind AudioLM: audiorl's own implementation, a tiny model built offline, real transformers.

What must hold: a release-layout checkpoint loads without remote code; the prompt is the release's
(``<|BOT|>human ... <|EOT|>``, one ``<audio_start>..<audio_end>`` block per 25 s chunk, the placeholder
count of its ``compute_token_num``); the mels are the release's recipe; a clip's embeddings do not
depend on what it is batched with; audio reaches the forward; think mode opens the reply with
``<think>\\n``; a completion's parts (think, answer, speech codes) reach the rewards that name them.
"""

from __future__ import annotations

import copy
import json
import os

import numpy as np
import pytest
import torch
from audiorl.data.audio import SAMPLE_RATE, Clip
from audiorl.model import load_audio_lm
from audiorl.model.step_audio2 import AUDIO_END, AUDIO_START, StepAudio2LM
from audiorl.model.step_audio2_modeling import (
    StepAudio2Config,
    StepAudio2ForCausalLM,
    chunk_token_counts,
    clip_mels,
    mel_frames,
)
from audiorl.model.tiny import build_tiny

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": [{"type": "audio", "audio": "x.wav"}, {"type": "text", "text": "Is the pitch high or low?"}]},
]


@pytest.fixture(scope="module")
def sa2(tmp_path_factory) -> StepAudio2LM:
    return load_audio_lm(build_tiny(str(tmp_path_factory.mktemp("step_audio2") / "model"), "step_audio2", seed=0))


def tone(seconds: float, hz: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def clip_of(wave: np.ndarray, name: str = "clip") -> Clip:
    return Clip(key=name, source=name, num_samples=len(wave))


SEEN: dict = {}


def parts_spy(completions, thinks, answers, audio_codes):
    """A reward that records the parts it is handed."""
    SEEN.update(thinks=thinks, answers=answers, audio_codes=audio_codes)
    return [1.0] * len(completions)


def embeddings(lm, waves):
    with torch.no_grad():
        return [lm.project(lm.model, e) for e in lm.encode(lm.model, waves)]


def test_step_audio2_tiny_is_in_the_release_layout_and_loads_without_remote_code(sa2):
    with open(os.path.join(sa2.path, "config.json")) as f:
        config = json.load(f)
    assert config["architectures"] == ["StepAudio2ForCausalLM"] and config["model_type"] == "step_audio_2"
    assert "auto_map" not in config
    from safetensors import safe_open

    with safe_open(os.path.join(sa2.path, "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert {k.split(".")[0] for k in keys} == {"model", "lm_head", "encoder", "adapter"}
    for key in ("encoder.blocks.0.attn.key.weight", "encoder.after_norm.weight", "encoder.positional_embedding.weight",
                "adapter.conv.weight", "adapter.linear1.weight", "adapter.linear2.weight", "model.embed_tokens.weight"):
        assert key in keys, key
    assert "encoder.blocks.0.attn.key.bias" not in keys  # the release's key projection has no bias
    from transformers import AutoModelForCausalLM

    auto = AutoModelForCausalLM.from_pretrained(sa2.path)  # our classes are registered: no trust_remote_code
    assert isinstance(auto, StepAudio2ForCausalLM)


def test_step_audio2_reads_the_release_config_spelling():
    """The release's text_config says num_attention_groups / max_seq_len and has no model_type."""
    config = StepAudio2Config(
        text_config={"hidden_size": 64, "num_attention_heads": 2, "num_attention_groups": 1, "max_seq_len": 512,
                     "intermediate_size": 128, "num_hidden_layers": 1, "vocab_size": 256},
        audio_encoder_config={"n_audio_state": 32, "n_audio_head": 2, "n_audio_layer": 1, "llm_dim": 64},
    )
    assert config.text_config.model_type == "qwen2"
    assert config.text_config.num_key_value_heads == 1 and config.text_config.max_position_embeddings == 512
    again = StepAudio2Config.from_dict(config.to_dict())
    assert again.text_config.num_key_value_heads == 1 and again.audio_encoder_config["n_audio_state"] == 32


def test_step_audio2_prompt_is_the_release_format(sa2):
    text = sa2.render(MESSAGES)
    assert text == (
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\n<audio_start><audio_patch><audio_end>"
        "Is the pitch high or low?<|EOT|><|BOT|>assistant\n"
    )
    ids = sa2.prompt_ids(MESSAGES, [clip_of(tone(1.0))])
    patch = sa2.audio_placeholder_id
    assert ids.count(patch) == sa2.audio_token_count(SAMPLE_RATE) == chunk_token_counts(SAMPLE_RATE)[0] == 13
    assert sa2.tokenizer.decode(ids[: ids.index(patch)]).endswith("<audio_start>")


@pytest.mark.parametrize(
    "seconds, counts", [(25.0, [313]), (1.0, [13]), (0.021, [1]), (0.0101, [0]), (30.0, [313, 63]), (25.005, [313, 0])]
)
def test_step_audio2_placeholder_counts_follow_compute_token_num(seconds, counts):
    """compute_token_num(F) with F - 2 valid frames; a full 25 s chunk gives the release's 313 patches."""
    assert chunk_token_counts(int(seconds * SAMPLE_RATE)) == counts


def test_step_audio2_long_clip_is_one_block_per_25_s_chunk(sa2):
    ids = sa2.prompt_ids(MESSAGES, [clip_of(tone(30.0))])
    start, end, patch = (sa2.tokenizer.convert_tokens_to_ids(t) for t in (AUDIO_START, AUDIO_END, "<audio_patch>"))
    assert ids.count(start) == ids.count(end) == 2 and ids.count(patch) == 313 + 63
    first_end = ids.index(end)
    assert ids[first_end + 1] == start and ids[first_end - 313 : first_end] == [patch] * 313
    (emb,) = embeddings(sa2, [tone(30.0)])
    assert emb.shape == (313 + 63, sa2.model.config.text_config.hidden_size)
    # a last chunk under ~30 ms keeps its (empty) block, as the release's compute_token_num gives; a clip that short is refused
    (emb,) = embeddings(sa2, [tone(25.005)])
    assert emb.shape[0] == 313 and sa2.prompt_ids(MESSAGES, [clip_of(tone(25.005))]).count(start) == 2
    with pytest.raises(Exception, match="too short"):
        sa2.prompt_ids(MESSAGES, [clip_of(tone(0.01))])


def test_step_audio2_mels_are_the_release_recipe(sa2):
    """Chunk + 479 zeros, periodic Hann STFT (n_fft 400, hop 160), power without the last frame, Slaney mels,
    log10 clamped to max - 8, (x + 4) / 4: computed here directly and against the feature extractor."""
    wave = tone(1.3, 700.0) + 0.01 * np.random.default_rng(0).standard_normal(int(1.3 * SAMPLE_RATE)).astype(np.float32)
    (mel,) = clip_mels(wave, sa2.processor.feature_extractor)
    assert mel.shape == (128, mel_frames(len(wave))) == (128, (len(wave) + 479) // 160)
    x = torch.from_numpy(np.pad(wave, (0, 479)).astype(np.float64))
    power = torch.stft(x, 400, 160, window=torch.hann_window(400, dtype=torch.float64), return_complex=True).abs() ** 2
    filters = torch.from_numpy(np.asarray(sa2.processor.feature_extractor.mel_filters, dtype=np.float64))
    log = torch.clamp(filters.T @ power[:, :-1], min=1e-10).log10()
    expected = (torch.maximum(log, log.max() - 8.0) + 4.0) / 4.0
    assert (mel.double() - expected).abs().max().item() < 1e-4


def test_step_audio2_clip_embeddings_do_not_depend_on_the_batch(sa2):
    """The release's batched encoder moves a chunk's embeddings with its batch-mates; ours must not."""
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(int(s * SAMPLE_RATE)).astype(np.float32) * 0.1 for s in (0.7, 4.2, 0.7, 2.03, 27.0)]
    together = embeddings(sa2, waves)
    for wave, batched in zip(waves, together):
        (alone,) = embeddings(sa2, [wave])
        assert alone.shape == (sum(chunk_token_counts(len(wave))), batched.shape[1])
        assert torch.equal(alone, batched) or (alone - batched).abs().max().item() < 1e-6


def test_step_audio2_audio_reaches_the_forward(sa2):
    low, high = tone(1.0, 300.0), tone(1.0, 1200.0)
    prompt = sa2.prompt_ids(MESSAGES, [clip_of(low)])
    ids = torch.tensor([prompt])
    with torch.no_grad():
        logits = [
            sa2.model(inputs_embeds=sa2.embed(sa2.model, ids, embeddings(sa2, [w]))).logits[0, -1] for w in (low, high)
        ]
    assert (logits[0] - logits[1]).abs().max().item() > 1e-3
    with pytest.raises(Exception, match="do not match"):
        sa2.embed(sa2.model, ids, embeddings(sa2, [tone(2.0)]))


def test_step_audio2_think_mode_opens_the_reply_and_parts_are_split(sa2):
    lm = copy.copy(sa2)
    lm.think = True
    ids = lm.prompt_ids(MESSAGES, [clip_of(tone(1.0))])
    assert lm.tokenizer.decode(ids).endswith("<|BOT|>assistant\n<think>\n")
    assert lm.completion_text("plan</think><answer>high</answer>") == "<think>\nplan</think><answer>high</answer>"
    from audiorl.rl.batch import TEXT, THINK, token_roles
    from audiorl.rl.prompts import PromptEncoder

    completion = PromptEncoder(lm, None).completion_ids("<think>\nplan</think><answer>high</answer>")
    assert lm.tokenizer.decode(completion).startswith("plan</think>")  # the prompt already holds the prefix
    roles = token_roles(torch.tensor([completion]), lm.think_token_ids(), lm.audio_output_token_range, think_open=True)[0]
    close = completion.index(lm.think_token_ids()[1])
    assert roles[: close + 1].tolist() == [THINK] * (close + 1) and roles[close + 1] == TEXT


def test_step_audio2_speech_reply_parts_reach_the_rewards(sa2):
    """A ta4 reply: <tts_start>, 1 text : 4 codes, pads; rewards get the answer text and the codes, pads dropped."""
    from types import SimpleNamespace

    from audiorl.rewards import RewardSet

    tok = sa2.tokenizer
    start, _ = sa2.audio_output_token_range
    pad = start + sa2.audio_pad_code
    text = tok("high", add_special_tokens=False)["input_ids"]
    reply = [tok.convert_tokens_to_ids("<tts_start>"), text[0], start + 3, start + 7, start + 1, start + 0,
             tok.convert_tokens_to_ids("<tts_pad>"), start + 5, pad, pad, pad, tok.convert_tokens_to_ids("<tts_end>")]
    assert sa2.audio_codes(reply) == [3, 7, 1, 0, 5]
    decoded = tok.decode(reply, skip_special_tokens=True)
    assert decoded == "high"
    SEEN.clear()
    RewardSet([SimpleNamespace(name="tests.test_step_audio2:parts_spy", weight=1.0, kwargs={})]).score(
        ["<think>a tone</think>" + decoded, "low"], audio_codes=[sa2.audio_codes(reply), []]
    )
    assert SEEN == {"thinks": ["a tone", None], "answers": ["high", "low"], "audio_codes": [[3, 7, 1, 0, 5], []]}


def test_step_audio2_lora_targets_the_text_model_and_the_merged_save_reloads(sa2, tmp_path):
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(1)
    wrapped = get_peft_model(copy.deepcopy(sa2.model), LoraConfig(r=4, target_modules=sa2.lora_target_regex))
    targeted = [n.removesuffix(".lora_A.default") for n, _ in wrapped.named_modules() if n.endswith("lora_A.default")]
    assert len(targeted) == sa2.model.config.text_config.num_hidden_layers * 7
    assert all(".model.layers." in n and "encoder" not in n and "adapter" not in n for n in targeted)
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.05)
    sa2.save_pretrained(wrapped, str(tmp_path / "merged"))
    again = load_audio_lm(str(tmp_path / "merged"))
    wave = tone(1.0, 500.0)
    ids = torch.tensor([sa2.prompt_ids(MESSAGES, [clip_of(wave)]) + [5, 6, 7]])
    with torch.no_grad():
        a = wrapped(inputs_embeds=sa2.embed(wrapped, ids, [sa2.project(wrapped, sa2.encode(wrapped, [wave])[0])])).logits
        b = again.model(inputs_embeds=again.embed(again.model, ids, embeddings(again, [wave]))).logits
        base = sa2.model(inputs_embeds=sa2.embed(sa2.model, ids, embeddings(sa2, [wave]))).logits
    assert (a - b).abs().max().item() < 1e-4 and (a - base).abs().max().item() > 1e-3


def test_step_audio2_mini_recipe_validates_on_a_tiny_stand_in(sa2, tmp_path, capsys):
    """recipes/step_audio2_mini_grpo.yaml with the tiny model standing in for the release: `audiorl validate`
    accepts it and reads every row (choices, answer, clip) before any model loads."""
    from tests.test_omni import assert_mcq_recipe_validates

    assert_mcq_recipe_validates("step_audio2_mini_grpo", sa2.path, tmp_path, capsys)


def test_step_audio2_speech_output_interleaves_1_text_to_4_codes_and_generates(sa2):
    """speech_output ends the prompt with <tts_start>; the ta4 layout pads the shorter stream; a sampled spoken
    reply's text part is its text tokens whatever the tokenizer marks special, its codes the rest."""
    lm = copy.copy(sa2)
    lm.speech_output = True
    ids = lm.prompt_ids(MESSAGES, [clip_of(tone(1.0))])
    assert lm.tokenizer.decode(ids).endswith("<|BOT|>assistant\n<tts_start>")
    start, _ = lm.audio_output_token_range
    pad_text, pad_code = lm.token_id("<tts_pad>"), start + lm.audio_pad_code
    text = lm.tokenizer("high", add_special_tokens=False)["input_ids"]
    reply = lm.interleave_speech(text, [1, 2, 3, 4, 5, 6])
    assert reply[0] == lm.token_id("<tts_start>") and reply[-1] == lm.token_id("<tts_end>")
    groups = reply[1:-1]
    assert len(groups) == 5 * max(len(text), 2)
    assert groups[0] == text[0] and groups[1:5] == [start + 1, start + 2, start + 3, start + 4]
    assert groups[6:10] == [start + 5, start + 6, pad_code, pad_code] and (len(text) > 1 or groups[5] == pad_text)
    assert lm.audio_codes(reply) == [1, 2, 3, 4, 5, 6]
    assert lm.completion_text("whatever the engine decoded", reply) == "high"
    from audiorl.data.audio import AudioStore
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rollouts.base import RolloutRequest, SamplingParams
    from audiorl.rollouts.hf import HFRolloutEngine

    class Store(AudioStore):
        def wave(self, clip):
            return tone(1.0)

    engine = HFRolloutEngine(lm, AudioEmbedder(lm, Store()))
    (completions,) = engine.generate([RolloutRequest(prompt_ids=ids, clips=[clip_of(tone(1.0))], n=2)], SamplingParams(max_new_tokens=12))
    for c in completions:  # the random tiny model samples codes among its text: the split holds for any reply
        codes = lm.audio_codes(c.token_ids)
        assert all(0 <= code < lm.audio_pad_code for code in codes)
        assert len(codes) == sum(start <= t < start + lm.audio_pad_code for t in c.token_ids)


def test_step_audio2_loss_can_leave_out_any_part_of_a_reply(sa2):
    """GRPO/PPO's and DPO's loss_on: [text, think] keeps a spoken reply's codes out of the loss (Step-Audio-AQAA's DPO)."""
    from audiorl.rl.batch import parts_loss_mask

    lm = copy.copy(sa2)
    lm.think = True
    tok = lm.tokenizer
    text = tok("plan</think>", add_special_tokens=False)["input_ids"]
    reply = text + lm.interleave_speech(tok("high", add_special_tokens=False)["input_ids"], [1, 2, 3, 4])
    ids = torch.tensor([reply])
    mask = torch.ones_like(ids)
    start, end = lm.audio_output_token_range
    codes = (ids >= start) & (ids < end)
    kept = parts_loss_mask(lm, ids, mask, ["text", "think"])
    assert kept[codes].sum() == 0 and kept[~codes].all()
    assert parts_loss_mask(lm, ids, mask, ["audio"])[0].tolist() == codes[0].long().tolist()
    close = reply.index(lm.think_token_ids()[1])
    assert parts_loss_mask(lm, ids, mask, ["think"])[0, : close + 1].all()  # think mode: the think opens in the prompt


def test_step_audio2_grpo_stage_validates_loss_on(tmp_path):
    from audiorl.common.errors import ConfigError
    from audiorl.rl.config import load_recipe

    recipe = os.path.join(os.path.dirname(__file__), "..", "recipes", "quickstart_step_audio2.yaml")
    load_recipe(recipe, [f"output_dir={tmp_path}", "stages.1.loss_on=[text,think]"])
    with pytest.raises(ConfigError, match="loss_on"):
        load_recipe(recipe, [f"output_dir={tmp_path}", "stages.1.loss_on=[text,speech]"])


def test_step_audio2_keeps_channel_0_of_a_stereo_file(sa2, tmp_path):
    """The release keeps channel 0 of multi-channel audio (the other families average the channels)."""
    import soundfile as sf
    from audiorl.data.audio import AudioStore
    from audiorl.model.base import family_class

    left, right = tone(0.5, 300.0), tone(0.5, 1200.0)
    sf.write(tmp_path / "stereo.wav", np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    assert family_class(sa2.path).audio_channels == "first"
    store = AudioStore(channels="first")
    assert np.allclose(store.wave(store.add_file(tmp_path / "stereo.wav")), left, atol=1e-6)
    mixed = AudioStore()
    assert np.allclose(mixed.wave(mixed.add_file(tmp_path / "stereo.wav")), (left + right) / 2, atol=1e-6)
