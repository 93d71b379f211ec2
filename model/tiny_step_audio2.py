"""A tiny random Step-Audio 2 built offline (``audiorl make-tiny OUT --family step_audio2``).

Same recipe as the other tiny families (``model/tiny.py``): a BPE tokenizer trained in code with
Step-Audio 2's special tokens (``<|BOT|>``, ``<|EOT|>``, the audio markers, ``<tts_*>`` and a small
block of ``<audio_N>`` speech codes, the last one the audio pad), a 128-mel Whisper feature
extractor and a small random model in the release's key layout (``model.*``, ``lm_head.*``,
``encoder.*``, ``adapter.*``, ``architectures: ["StepAudio2ForCausalLM"]``), which our class and
vLLM (through audiorl's plugin) both load. Text head_dim is 64, the smallest vLLM's CPU attention takes.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from audiorl.model.tiny import TinySpec, build_tokenizer, text_config

#: speech codes in the tiny vocabulary (the release has 6561 and a pad): <audio_0> .. <audio_{N-1}>, the last the pad
TINY_AUDIO_CODES = 65
#: the release's encoder width is 1280 with a 2048-wide adaptor; the tiny one keeps the ratio small
ADAPTER_HIDDEN = 256
#: At the default init the random encoder's outputs barely differ between a 300 Hz and a 1 kHz tone, and the
#: adaptor's are ~10x smaller than the text embeddings: these gains give the tiny model audio it can tell
#: apart (as the other tiny families' towers) at the scale of its token embeddings.
AUDIO_CONV_GAIN = 5.0
ADAPTER_OUT_GAIN = 20.0


@dataclass(frozen=True)
class TinyStepAudio2Spec(TinySpec):
    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 2


def _sample_prompt() -> str:
    return (
        "<|BOT|>system\nYou are a helpful assistant.<|EOT|><|BOT|>human\n<audio_start><audio_patch><audio_end>"
        "<|EOT|><|BOT|>assistant\n"
    )


def build_tiny_step_audio2(out_dir: str, seed: int = 0, spec: TinyStepAudio2Spec = TinyStepAudio2Spec()) -> str:
    """Write a tiny random Step-Audio 2 (model, tokenizer, feature extractor) to ``out_dir``; returns it."""
    from audiorl.model.step_audio2 import SPECIAL_TOKENS, StepAudio2LM, StepAudio2Processor
    from audiorl.model.step_audio2_modeling import StepAudio2Config, StepAudio2ForCausalLM
    from transformers import GenerationConfig, WhisperFeatureExtractor

    codes = [f"<audio_{i}>" for i in range(TINY_AUDIO_CODES)]
    tokenizer = build_tokenizer(
        spec.vocab_size, special_tokens=["<|endoftext|>", *SPECIAL_TOKENS, *codes], chat_template=_sample_prompt(), eos_token="<|EOT|>"
    )
    processor = StepAudio2Processor(tokenizer, WhisperFeatureExtractor(feature_size=128))
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_ids = [tokenizer.convert_tokens_to_ids("<|EOT|>"), pad_id]
    vocab = -(-len(tokenizer) // 64) * 64
    config = StepAudio2Config(
        text_config={**text_config(spec, vocab, eos_ids, pad_id), "rope_theta": 10000.0},
        audio_encoder_config={
            "n_mels": 128,
            "n_audio_ctx": 1500,
            "n_audio_state": spec.audio_d_model,
            "n_audio_head": spec.audio_heads,
            "n_audio_layer": spec.audio_layers,
            "llm_dim": spec.hidden_size,
            "kernel_size": 3,
            "adapter_stride": 2,
            "adapter_hidden_size": ADAPTER_HIDDEN,
        },
        architectures=["StepAudio2ForCausalLM"],
        eos_token_id=eos_ids[0],
        pad_token_id=pad_id,
    )
    torch.manual_seed(seed)
    model = StepAudio2ForCausalLM(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.lm_head_std)  # see TinySpec.lm_head_std
        for conv in (model.encoder.conv1, model.encoder.conv2):
            conv.weight.mul_(AUDIO_CONV_GAIN)
        # The gain goes in before the adaptor's ReLU (which it commutes with), not on its last Linear: the
        # model computes the same, but the last Linear starts at the default scale, where an optimizer step
        # (train_projector) moves the audio embeddings as much as a step moves Qwen2-Audio's projector.
        model.adapter.linear1.weight.mul_(ADAPTER_OUT_GAIN)
        model.adapter.linear1.bias.mul_(ADAPTER_OUT_GAIN)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=None)
    StepAudio2LM(model, processor).save_pretrained(model, out_dir)
    return os.path.abspath(out_dir)
