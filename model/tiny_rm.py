"""A tiny, randomly initialised reward model built offline (``Qwen2ForSequenceClassification``, one label).

It shares the tiny Qwen2-Audio's text sizes and its byte-level BPE tokenizer (``model/tiny.py``), so a
test can train it on text the policy's tokenizer knows. The tokenizer carries the Qwen2-Audio chat
template: rendered with string contents, it is the plain Qwen chat format (no audio).
"""

from __future__ import annotations

import os

import torch
from audiorl.model.tiny import TinySpec, build_tokenizer


def build_tiny_reward_model(out_dir: str, seed: int = 0, spec: TinySpec = TinySpec()) -> str:
    """Write a tiny random sequence-classification reward model and its tokenizer to ``out_dir``; returns it."""
    from audiorl.model.qwen2_audio import CHAT_TEMPLATE
    from transformers import Qwen2Config, Qwen2ForSequenceClassification

    tokenizer = build_tokenizer(spec.vocab_size)
    tokenizer.chat_template = CHAT_TEMPLATE
    tokenizer.padding_side = "right"  # as TRL's preference collator pads
    pad_id = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    config = Qwen2Config(
        vocab_size=-(-len(tokenizer) // 64) * 64,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_positions,
        rope_theta=10000.0,
        tie_word_embeddings=False,
        num_labels=1,
        # The classifier reads the last token that is not padding: it must know the pad id.
        pad_token_id=pad_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = Qwen2ForSequenceClassification(config).eval()
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return os.path.abspath(out_dir)
