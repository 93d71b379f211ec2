"""A tiny, randomly initialised Qwen2-Audio built offline from configs (``audiorl make-tiny OUT``).

Everything is made here: a byte-level BPE tokenizer trained in code on the embedded tasks' text,
a Whisper feature extractor, the Qwen2-Audio chat template and a small random model. The output
directory is in the hub's key layout and loads in transformers and vLLM (text head_dim is 64,
the smallest vLLM's CPU attention accepts).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import torch

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|AUDIO|>", "<|audio_eos|>"]
# Reasoning and answer tags are ordinary (non-special) tokens, as in Qwen tokenizers: decoding with
# skip_special_tokens keeps them, so format rewards can see them.
TAG_TOKENS = ["<think>", "</think>", "<answer>", "</answer>"]


@dataclass(frozen=True)
class TinySpec:
    vocab_size: int = 1024
    hidden_size: int = 128
    intermediate_size: int = 384
    num_layers: int = 2
    num_heads: int = 2  # head_dim 64
    audio_d_model: int = 64
    audio_layers: int = 2
    audio_heads: int = 2
    audio_ffn: int = 128
    window_seconds: int = 30  # Whisper's window, as in the real Qwen2-Audio
    max_positions: int = 4096
    # A trained LM's output layer lets it put nearly all probability on one token. At the default
    # init (std 0.02) a 128-wide model cannot (max logit ~2.6 over ~800 tokens), and a LoRA that does
    # not touch lm_head could never make sampling confident. This scale makes that reachable.
    lm_head_std: float = 0.1


def _corpus(chat_template: str) -> list[str]:
    from audiorl.data.synth import corpus_text

    lines = corpus_text()
    lines += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nAudio 1: ",
        "<|im_end|>\n<|im_start|>assistant\n",
        chat_template,
        "0 1 2 3 4 5 6 7 8 9 10 100 1000 . , ; : ! ? ' \" ( ) [ ] - + * / = % & # @ $",
    ]
    return lines


def build_tokenizer(
    vocab_size: int = 1024,
    special_tokens: list[str] | None = None,
    named_tokens: dict[str, str] | None = None,
    chat_template: str | None = None,
    eos_token: str = "<|im_end|>",
):
    """Byte-level BPE with Qwen2's pre-tokenizer, trained deterministically on the embedded text.

    ``special_tokens`` (after ``<|endoftext|>``, the pad) default to Qwen2-Audio's; ``named_tokens``
    become tokenizer attributes (``tokenizer.audio_token``...), as multimodal processors expect.
    """
    if chat_template is None:
        from audiorl.model.qwen2_audio import CHAT_TEMPLATE as chat_template
    special_tokens = special_tokens or SPECIAL_TOKENS
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2Tokenizer
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(special_tokens) - len(TAG_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(chat_template), trainer=trainer)
    vocab = bpe.get_vocab()
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in json.loads(bpe.to_str())["model"]["merges"]]
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        unk_token=None,
        eos_token=eos_token,
        pad_token="<|endoftext|>",
        model_max_length=32768,
        model_specific_special_tokens=named_tokens or None,
    )
    tok.add_special_tokens({"additional_special_tokens": special_tokens[1:]})
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in TAG_TOKENS])
    return tok


def text_config(spec: TinySpec, vocab_size: int, eos_ids: list[int], pad_id: int) -> dict:
    """The tiny text LLM's config keys every family shares (untied head, no bos)."""
    return {
        "vocab_size": vocab_size,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_hidden_layers": spec.num_layers,
        "num_attention_heads": spec.num_heads,
        "num_key_value_heads": spec.num_heads,
        "max_position_embeddings": spec.max_positions,
        "tie_word_embeddings": False,
        "eos_token_id": eos_ids,
        "pad_token_id": pad_id,
        "bos_token_id": None,
    }


def build_tiny_qwen2_audio(out_dir: str, seed: int = 0, spec: TinySpec = TinySpec()) -> str:
    """Write a tiny random Qwen2-Audio (model, tokenizer, processor) to ``out_dir``; returns it."""
    from audiorl.model.qwen2_audio import CHAT_TEMPLATE, Qwen2AudioLM
    from transformers import (
        GenerationConfig,
        Qwen2AudioConfig,
        Qwen2AudioForConditionalGeneration,
        Qwen2AudioProcessor,
        WhisperFeatureExtractor,
    )

    tokenizer = build_tokenizer(spec.vocab_size)
    feature_extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=spec.window_seconds)
    processor = Qwen2AudioProcessor(feature_extractor=feature_extractor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)

    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    eos_ids = [tokenizer.convert_tokens_to_ids("<|im_end|>"), pad_id]
    vocab = -(-len(tokenizer) // 64) * 64  # rows for every token, rounded up like real checkpoints
    config = Qwen2AudioConfig(
        audio_config={
            "model_type": "qwen2_audio_encoder",
            "d_model": spec.audio_d_model,
            "encoder_layers": spec.audio_layers,
            "encoder_attention_heads": spec.audio_heads,
            "encoder_ffn_dim": spec.audio_ffn,
            "num_mel_bins": 128,
            "max_source_positions": spec.window_seconds * 50,
        },
        text_config={"model_type": "qwen2", **text_config(spec, vocab, eos_ids, pad_id), "rope_theta": 10000.0},
        audio_token_index=tokenizer.convert_tokens_to_ids("<|AUDIO|>"),
    )
    config.pad_token_id = pad_id
    config.eos_token_id = eos_ids[0]  # what the tokenizer calls eos (Trainer re-aligns them otherwise)
    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    with torch.no_grad():
        model.lm_head.weight.normal_(0.0, spec.lm_head_std)
    model.generation_config = GenerationConfig(eos_token_id=eos_ids, pad_token_id=pad_id, bos_token_id=None)

    Qwen2AudioLM(model, processor).save_pretrained(model, out_dir)
    return os.path.abspath(out_dir)


def _tiny_omni(family: str):
    def build(out_dir: str, seed: int = 0) -> str:
        from audiorl.model.tiny_omni import build_tiny_omni

        return build_tiny_omni(out_dir, family, seed=seed)

    return build


def _tiny_step_audio2(out_dir: str, seed: int = 0) -> str:
    from audiorl.model.tiny_step_audio2 import build_tiny_step_audio2

    return build_tiny_step_audio2(out_dir, seed=seed)


#: family -> builder of its tiny random model (``audiorl make-tiny OUT --family F``, ``model.tiny_family``).
TINY_FAMILIES = {
    "qwen2_audio": build_tiny_qwen2_audio,
    "qwen2_5_omni": _tiny_omni("qwen2_5_omni"),
    "qwen3_omni_moe": _tiny_omni("qwen3_omni_moe"),
    "step_audio2": _tiny_step_audio2,
    "step_audio_2": _tiny_step_audio2,  # the family's model_type spelling
}


def build_tiny(out_dir: str, family: str = "qwen2_audio", seed: int = 0) -> str:
    """Write the tiny random model of ``family`` to ``out_dir``; returns its absolute path."""
    if family not in TINY_FAMILIES:
        raise ValueError(f"no tiny model for family '{family}' (known: {', '.join(TINY_FAMILIES)})")
    return TINY_FAMILIES[family](out_dir, seed=seed)
