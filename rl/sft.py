"""Supervised fine-tuning with audio on TRL's ``SFTTrainer`` (warm starts before RL).

The collator tokenises prompt (with expanded audio placeholders) + completion and masks the
prompt out of the labels; ``compute_loss`` swaps the token ids for input embeddings that carry
the audio, then lets TRL compute the loss and its metrics as usual.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.rl.prompts import PromptEncoder, clean_messages
from trl import SFTTrainer


class AudioSFTCollator:
    def __init__(self, prompts: PromptEncoder, completion_column: str = "completion"):
        self.prompts = prompts
        self.completion_column = completion_column
        tokenizer = prompts.lm.tokenizer
        self.tokenizer = tokenizer
        self.eos_id = prompts.lm.eos_token_ids[0]

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sequences, labels, clips = [], [], []
        for row in rows:
            prompt_ids, row_clips = self.prompts.encode(clean_messages(row["prompt"]), row=row.get("_row"))
            completion = self.tokenizer(row[self.completion_column], add_special_tokens=False)["input_ids"] + [self.eos_id]
            sequences.append(prompt_ids + completion)
            labels.append([-100] * len(prompt_ids) + completion)
            clips.append(row_clips)
        width = max(len(s) for s in sequences)
        pad = self.tokenizer.pad_token_id
        input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
        label_ids = torch.full((len(rows), width), -100, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, (seq, lab) in enumerate(zip(sequences, labels)):
            input_ids[i, : len(seq)] = torch.tensor(seq)
            label_ids[i, : len(lab)] = torch.tensor(lab)
            attention_mask[i, : len(seq)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label_ids, "audio_clips": clips}


class AudioSFTTrainer(SFTTrainer):
    def __init__(self, *, embedder: AudioEmbedder, **kwargs: Any):
        self.embedder = embedder
        super().__init__(**kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        clips = inputs.pop("audio_clips")
        input_ids = inputs.pop("input_ids")
        inputs["inputs_embeds"] = self.embedder.inputs_embeds(self.accelerator.unwrap_model(model), input_ids, clips)
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)
