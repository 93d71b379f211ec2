"""The ``sft`` stage: supervised fine-tuning with audio on TRL's ``SFTTrainer`` (public API only).

The collator tokenises prompt (with expanded audio placeholders) + completion and masks the
prompt out of the labels; ``compute_loss`` (Trainer's documented override point) swaps the token
ids for the inputs of the one audio-aware forward (``AudioForward.model_inputs``), then lets TRL
compute the loss and its metrics as usual.
"""

from __future__ import annotations

import math
import os
import random
import time
from collections.abc import Sequence
from typing import Any

import torch
from audiorl.common.errors import ConfigError
from audiorl.model.forward import AudioForward
from audiorl.rl.prompts import PromptEncoder
from trl import SFTTrainer


class AudioSFTCollator:
    def __init__(self, prompts: PromptEncoder, completion_column: str = "completion"):
        self.prompts = prompts
        self.completion_column = completion_column
        self.tokenizer = prompts.lm.tokenizer

    def __call__(self, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
        sequences, labels, clips = [], [], []
        for row in rows:
            prompt_ids, row_clips = self.prompts.encode(row["prompt"], row=row.get("_row"))
            completion = self.prompts.completion_ids(row[self.completion_column])
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
    def __init__(self, *, audio_forward: AudioForward, **kwargs: Any):
        self.audio_forward = audio_forward
        super().__init__(**kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        clips = inputs.pop("audio_clips")
        input_ids = inputs.pop("input_ids")
        inputs.update(self.audio_forward.model_inputs(self.accelerator.unwrap_model(model), input_ids, inputs.pop("attention_mask"), clips, "policy"))
        return super().compute_loss(model, inputs, return_outputs=return_outputs, num_items_in_batch=num_items_in_batch)


def sft_rows(train_rows: Sequence[dict], config: Any, seed: int) -> list[dict]:
    """The stage's examples: each row's prompt and its completion (the template over its columns)."""
    rows = train_rows[: config.max_samples] if config.max_samples else list(train_rows)
    labels = [row.get("label") for row in rows]
    if not config.shuffle_labels:
        return _with_completions(rows, labels, config)
    # A fresh shuffle per epoch: one fixed shuffle would pair each clip with the same wrong label every
    # epoch, which a model that hears learns (clip -> random label) and GRPO must then unlearn.
    rng = random.Random(seed)
    out = []
    for _ in range(sft_passes(config)):
        rng.shuffle(labels)
        out += _with_completions(rows, labels, config)
    return out


def sft_passes(config: Any) -> int:
    """Copies of the examples in the stage's data set: one per epoch when labels are shuffled (each its own shuffle)."""
    return max(1, math.ceil(config.epochs)) if config.shuffle_labels else 1


def _with_completions(rows: Sequence[dict], labels: Sequence[Any], config: Any) -> list[dict]:
    out = []
    for row, label in zip(rows, labels):
        values = {**row, "label": label}
        try:
            completion = config.completion_template.format(**values)
        except KeyError as exc:
            raise ConfigError(f"'completion_template' of the sft stage names column {exc} which {row['_source']} row {row['_row']} lacks") from None
        out.append({"prompt": row["prompt"], "completion": completion, "_row": row["_row"]})
    return out


class SFTStage:
    def __init__(self, run: Any, config: Any):
        self.run_ = run
        self.config = config

    def build_trainer(self) -> AudioSFTTrainer:
        import datasets
        from audiorl.rl.metrics import TrainerMetrics
        from trl import SFTConfig

        run, cfg = self.run_, self.config
        run.seed_everything()
        run.apply_lora()
        args = SFTConfig(
            output_dir=os.path.join(run.config.output_dir, "trl_sft"),
            num_train_epochs=cfg.epochs / sft_passes(cfg),
            per_device_train_batch_size=cfg.batch_size,
            learning_rate=cfg.learning_rate,
            lr_scheduler_type="constant",
            logging_steps=cfg.logging_steps,
            max_length=None,
            dataset_kwargs={"skip_prepare_dataset": True},
            use_cpu=run.device == "cpu",
            bf16=run.config.model.dtype == "bfloat16",
            fp16=run.config.model.dtype == "float16",
            report_to=[],
            save_strategy="no",
            gradient_checkpointing=False,
            remove_unused_columns=False,
            dataloader_num_workers=0,
            seed=run.config.seed,
            disable_tqdm=True,
        )
        return AudioSFTTrainer(
            audio_forward=run.forward,
            model=run.lm.model,
            args=args,
            train_dataset=datasets.Dataset.from_list(sft_rows(run.train_rows, cfg, run.config.seed)),
            processing_class=run.lm.tokenizer,
            data_collator=AudioSFTCollator(run.prompts),
            callbacks=[TrainerMetrics(run.metrics, cfg.name)],
        )

    def run(self) -> None:
        text_config = self.run_.lm.model.config.get_text_config()
        router_logits = getattr(text_config, "output_router_logits", None)
        trainer = self.build_trainer()
        start = time.perf_counter()
        trainer.train()
        if router_logits is not None:
            # TRL (1.16) turns on an MoE config's router logits for its aux loss and leaves them on; generation then
            # computes that loss over the cached prompt's mask and fails (Qwen3-Omni). The stage gives them back.
            text_config.output_router_logits = router_logits
        self.run_.weights_changed()
        self.run_.timings[f"{self.config.name}_s"] = time.perf_counter() - start
