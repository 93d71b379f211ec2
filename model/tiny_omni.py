"""Tiny random Qwen2.5-Omni and Qwen3-Omni (MoE) thinkers built offline (``audiorl make-tiny OUT --family ...``).

Same recipe as the tiny Qwen2-Audio (``model/tiny.py``): a BPE tokenizer trained in code, a
Whisper feature extractor, the family's chat format and a small random thinker, written in the
release layout (``thinker.*`` keys, the whole-model config with audio output off) that transformers
and vLLM both load. The vision tower is there (vLLM's model has one and expects its weights) but
is as small as vLLM accepts; rollouts turn images and video off.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from audiorl.model.tiny import TAG_TOKENS, TinySpec, build_tokenizer, text_config


@dataclass(frozen=True)
class OmniTokens:
    """The family's multimodal marker tokens, by the tokenizer attribute the processors read."""

    audio_token: str
    audio_bos_token: str
    audio_eos_token: str
    image_token: str
    video_token: str
    vision_bos_token: str
    vision_eos_token: str


ROUTER_STD = 1.0
AUDIO_CONV_GAIN = 5.0
AUDIO_OUT_GAIN = 10.0

QWEN2_5_OMNI_TOKENS = OmniTokens(
    "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>", "<|IMAGE|>", "<|VIDEO|>", "<|vision_bos|>", "<|vision_eos|>"
)
QWEN3_OMNI_TOKENS = OmniTokens(
    "<|audio_pad|>", "<|audio_start|>", "<|audio_end|>", "<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>"
)


def chat_template(tokens: OmniTokens, system: str | None) -> str:
    """The release chat format for text and audio parts (images and video are not fed in audio RL)."""
    audio = f"{tokens.audio_bos_token}{tokens.audio_token}{tokens.audio_eos_token}"
    default_system = (
        "{% if loop.first and message['role'] != 'system' %}"
        f"<|im_start|>system\n{system}<|im_end|>\n"
        "{% endif %}"
        if system
        else ""
    )
    return (
        "{% for message in messages %}"
        + default_system
        + "<|im_start|>{{ message['role'] }}\n"
        "{% if message['content'] is string %}"
        "{{ message['content'] }}"
        "{% else %}"
        "{% for content in message['content'] %}"
        "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
        + audio
        + "{% elif 'text' in content %}"
        "{{ content['text'] }}"
        "{% endif %}"
        "{% endfor %}"
        "{% endif %}"
        "<|im_end|>\n"
        "{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )


FAMILIES = {
    # Qwen2.5-Omni's release prompt carries a default system message; Qwen3-Omni's has none.
    "qwen2_5_omni": (QWEN2_5_OMNI_TOKENS, "You are a helpful assistant."),
    "qwen3_omni_moe": (QWEN3_OMNI_TOKENS, None),
}


def _tokenizer(family: str, spec: TinySpec):
    tokens, system = FAMILIES[family]
    named = dict(vars(tokens))
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", *named.values()]
    template = chat_template(tokens, system)
    return build_tokenizer(spec.vocab_size, special, named, template), template, tokens


def _thinker_config(family: str, tok, tokens: OmniTokens, spec: TinySpec) -> dict:
    ids = {name: tok.convert_tokens_to_ids(value) for name, value in vars(tokens).items()}
    pad_id = tok.convert_tokens_to_ids("<|endoftext|>")
    eos_ids = [tok.convert_tokens_to_ids("<|im_end|>"), pad_id]
    head_dim = spec.hidden_size // spec.num_heads
    rope = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [head_dim // 8, 3 * head_dim // 16, 3 * head_dim // 16]}
    text = {**text_config(spec, -(-len(tok) // 64) * 64, eos_ids, pad_id), "rope_parameters": rope}
    audio = {
        "d_model": spec.audio_d_model,
        "encoder_layers": spec.audio_layers,
        "encoder_attention_heads": spec.audio_heads,
        "encoder_ffn_dim": spec.audio_ffn,
        "num_mel_bins": 128,
        "max_source_positions": 1500,
        "output_dim": spec.hidden_size,
    }
    # head_dim 64: the smallest vLLM's CPU attention takes, in the vision tower too
    vision = {"depth": 1, "hidden_size": 64, "intermediate_size": 64, "num_heads": 1, "out_hidden_size": spec.hidden_size}
    # Qwen2.5-Omni's config names the placeholder ids "*_token_index", Qwen3-Omni's "*_token_id"
    placeholder = "_token_index" if family == "qwen2_5_omni" else "_token_id"
    config = {
        "audio_config": audio,
        "vision_config": vision,
        "text_config": text,
        **{f"{modality}{placeholder}": ids[f"{modality}_token"] for modality in ("audio", "image", "video")},
        "audio_start_token_id": ids["audio_bos_token"],
        "audio_end_token_id": ids["audio_eos_token"],
        "vision_start_token_id": ids["vision_bos_token"],
        "vision_end_token_id": ids["vision_eos_token"],
        "user_token_id": tok.convert_tokens_to_ids("user"),
        "pad_token_id": pad_id,
    }
    if family == "qwen2_5_omni":
        text["use_sliding_window"] = False
        vision.update(fullatt_block_indexes=[0], window_size=112, patch_size=14)
        return config
    text.update(
        head_dim=head_dim,
        num_experts=4,
        num_experts_per_tok=2,
        moe_intermediate_size=spec.intermediate_size // 2,
        decoder_sparse_step=1,
        mlp_only_layers=[],
    )
    audio.update(n_window=50, n_window_infer=800, conv_chunksize=500, downsample_hidden_size=32)
    # image_size and apply_vit_abs_pos_embed: vLLM reads them (release configs carry them, transformers has no fields)
    vision.update(
        patch_size=16, num_position_embeddings=64, deepstack_visual_indexes=[0], image_size=128, apply_vit_abs_pos_embed=True
    )
    return config


def _center_audio_output(lm, model, seed: int) -> None:
    """Subtract the random tower's mean output (over noise clips) from its last bias.

    Qwen3's tower ends in Linear -> GELU -> Linear: the GELU's positive mean becomes one shared vector in every
    audio embedding, ~6x the part that differs between a 300 Hz and a 1 kHz tone, and after the language
    model's RMSNorm little of the audio is left to tell apart. A trained tower has no such offset.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    noise = [(0.1 * rng.standard_normal(16000)).astype(np.float32) for _ in range(8)]
    with torch.no_grad():
        mean = torch.cat(lm.encode(model, noise)).mean(0)
        model.audio_tower.proj2.bias.sub_(mean)


def build_tiny_omni(out_dir: str, family: str = "qwen2_5_omni", seed: int = 0, spec: TinySpec = TinySpec()) -> str:
    """Write a tiny random Omni thinker of ``family`` (model, tokenizer, processor parts) to ``out_dir``; returns it."""
    import transformers
    from audiorl.model.base import FAMILIES as MODEL_FAMILIES
    from audiorl.model.omni_processor import omni_processor
    from transformers import GenerationConfig, WhisperFeatureExtractor

    if family not in FAMILIES:
        raise ValueError(f"no tiny Omni family '{family}' (known: {', '.join(FAMILIES)})")
    lm_cls = MODEL_FAMILIES.get(family)
    tok, template, tokens = _tokenizer(family, spec)
    assert all(tok.convert_tokens_to_ids(t) != tok.unk_token_id for t in TAG_TOKENS)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=spec.window_seconds)
    processor = omni_processor(family, tok, feature_extractor, template)

    thinker_cls = getattr(transformers, lm_cls.thinker_class)
    config_cls = thinker_cls.config_class
    thinker_config = config_cls(**_thinker_config(family, tok, tokens, spec))
    torch.manual_seed(seed)
    model = thinker_cls(thinker_config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.lm_head_std)  # see TinySpec.lm_head_std
        for name, param in model.named_parameters():
            if name.startswith("audio_tower.conv") and name.endswith("weight"):
                # At the default init the tower's sinusoidal positions swamp the convolutions' output, and the
                # random tower barely tells a 300 Hz tone from a 1 kHz one (mean embeddings: nearest-centroid
                # accuracy 0.5 on the pitch set); with this gain it is 1.0, like the tiny Qwen2-Audio's.
                param.mul_(AUDIO_CONV_GAIN)
            if name in ("audio_tower.proj1.weight", "audio_tower.proj1.bias"):
                # Qwen3's tower ends in two projections; at the default init its embeddings (std ~0.01) sit below
                # the text embeddings' (0.02) and barely move the residual stream. This puts them near 0.1, where
                # the other tiny families' audio embeddings are. The gain goes in before the last projection, not
                # on it: proj2 (what train_projector trains) then starts at the default scale, where an optimizer
                # step moves the audio embeddings as much as a step moves Qwen2-Audio's projector.
                param.mul_(AUDIO_OUT_GAIN)
            if name.endswith("mlp.gate.weight"):
                # A decisive router. At the default init the top-2 of 4 experts are often separated by ~1e-6, so
                # float noise between two correct implementations (vLLM vs transformers, padded vs not) flips
                # which experts a token uses; trained routers are far from ties.
                param.normal_(0.0, ROUTER_STD)
    lm = lm_cls(model, processor)
    if family == "qwen3_omni_moe":
        _center_audio_output(lm, model, seed)
    eos_ids = thinker_config.text_config.eos_token_id
    pad_id = thinker_config.text_config.pad_token_id
    thinker_config.eos_token_id = eos_ids[0]  # what the tokenizer calls eos (Trainer re-aligns them otherwise)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=None)
    lm.save_pretrained(model, out_dir)
    return os.path.abspath(out_dir)
