"""SFT with audio on TRL's SFTTrainer: labels cover the completion only, and the audio reaches the loss."""

from __future__ import annotations

from collections import Counter

import torch
from audiorl.rl.config import load_recipe
from audiorl.rl.sft import AudioSFTCollator, SFTStage
from audiorl.rl.sft import sft_rows as stage_rows
from audiorl.rl.train import RLRecipe

from tests.conftest import QUICKSTART, quick_overrides


def make_session(tmp_path, tiny_model_dir, pitch_data, **extra):
    recipe = RLRecipe(load_recipe(QUICKSTART, quick_overrides(tmp_path, tiny_model_dir, pitch_data, **extra)))
    recipe.setup()
    recipe.sft = recipe.config.stages[0]
    return recipe


def sft_rows(s):
    return stage_rows(s.train_rows, s.sft, s.config.seed)


def test_shuffled_labels_keep_the_format_and_the_label_counts(tmp_path, tiny_model_dir, pitch_data):
    s = make_session(tmp_path, tiny_model_dir, pitch_data)
    rows = sft_rows(s)
    template = s.sft.completion_template
    targets = [template.format(label=r["label"]) for r in s.train_rows]
    assert Counter(r["completion"] for r in rows) == Counter(targets)  # same labels...
    assert [r["completion"] for r in rows] != targets  # ...not on the same rows


def test_shuffled_labels_are_reshuffled_every_epoch(tmp_path, tiny_model_dir, pitch_data):
    # one shuffle for every epoch would pair each clip with the same wrong label each time: a model that hears learns that
    s = make_session(tmp_path, tiny_model_dir, pitch_data, **{"stages.sft.epochs": 2.5})
    rows, n = sft_rows(s), len(s.train_rows)
    assert len(rows) == 3 * n and SFTStage(s, s.sft).build_trainer().args.num_train_epochs == 2.5 / 3  # 2.5 epochs in all
    template = s.sft.completion_template
    passes = [rows[k * n : (k + 1) * n] for k in range(3)]
    assert all([r["_row"] for r in p] == [r["_row"] for r in s.train_rows] for p in passes)
    assert all(Counter(r["completion"] for r in p) == Counter(template.format(label=r["label"]) for r in s.train_rows) for p in passes)
    assert passes[0] != passes[1] != passes[2]
    s.sft.shuffle_labels = False  # true labels: one copy, the epochs as set
    assert [r["completion"] for r in sft_rows(s)] == [template.format(label=r["label"]) for r in s.train_rows]


def test_collator_masks_the_prompt_and_ends_with_eos(tmp_path, tiny_model_dir, pitch_data):
    s = make_session(tmp_path, tiny_model_dir, pitch_data)
    batch = AudioSFTCollator(s.prompts)(sft_rows(s)[:3])
    for ids, labels, mask, clips in zip(batch["input_ids"], batch["labels"], batch["attention_mask"], batch["audio_clips"]):
        n = int(mask.sum())
        supervised = labels[:n] != -100
        first = int(supervised.nonzero()[0])
        assert not supervised[:first].any() and supervised[first:].all()
        assert (ids[:first] == s.lm.audio_placeholder_id).sum() == s.lm.audio_token_count(clips[0].num_samples)
        assert int(ids[n - 1]) == s.lm.eos_token_ids[0]
        assert s.lm.tokenizer.decode(ids[first:n], skip_special_tokens=True).startswith("<think>")


def test_sft_trains_with_the_audio_in_every_forward(tmp_path, tiny_model_dir, pitch_data):
    s = make_session(tmp_path, tiny_model_dir, pitch_data, **{"stages.sft.epochs": 3, "stages.sft.batch_size": 4, "stages.sft.logging_steps": 1})
    trainer = SFTStage(s, s.sft).build_trainer()
    seen = []
    original = s.forward.model_inputs

    def spy(model, input_ids, attention_mask, clips_per_row, role):
        seen.append((torch.is_grad_enabled(), sum(map(len, clips_per_row)), int((input_ids == s.lm.audio_placeholder_id).sum())))
        return original(model, input_ids, attention_mask, clips_per_row, role)

    s.forward.model_inputs = spy
    trainer.train()
    assert all(grad for grad, _, _ in seen)
    assert sum(clips for _, clips, _ in seen) == 3 * len(s.train_rows)  # one clip per row, every epoch
    assert all(slots > 0 for _, _, slots in seen)
    losses = [r["loss"] for r in s.metrics.rows if r["stage"] == "sft" and "loss" in r]
    assert losses[-1] < 0.5 * losses[0]
