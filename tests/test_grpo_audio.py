"""Audio reaches every forward of audio GRPO: generation, reference, loss; the encoder runs once per clip."""

from __future__ import annotations

import inspect

import pytest
import torch
from audiorl.rl.algos import ADVANTAGES
from audiorl.rl.config import load_recipe
from audiorl.rl.train import build_grpo_trainer, open_session
from peft.tuners.lora import LoraLayer

from tests.conftest import QUICKSTART, quick_overrides


def make_trainer(tmp_path, tiny_model_dir, pitch_data, **extra):
    config = load_recipe(QUICKSTART, quick_overrides(tmp_path, tiny_model_dir, pitch_data, **extra))
    session = open_session(config)
    return session, build_grpo_trainer(session)


def reference_active(model) -> bool:
    """TRL's reference forward: adapters disabled, or its frozen copy of the initial adapter ("ref") active."""
    return getattr(model, "active_adapter", None) == "ref" or any(
        m.disable_adapters for m in model.modules() if isinstance(m, LoraLayer)
    )


class EmbedSpy:
    """Records every call that puts audio into a forward: who called, grad mode, adapters on/off."""

    def __init__(self, embedder):
        self.calls = []
        original = embedder.inputs_embeds

        def spy(model, input_ids, clips_per_row):
            callers = {f.function for f in inspect.stack()[1:12]}
            phase = (
                "generate" if "_generate_chunk" in callers
                else "loss" if "_compute_loss" in callers
                else "reference" if reference_active(model)
                else "old_policy" if "_generate_and_score_completions" in callers
                else "other"
            )
            n_placeholders = int((input_ids == embedder.lm.audio_placeholder_id).sum())
            self.calls.append({"phase": phase, "grad": torch.is_grad_enabled(), "clips": sum(map(len, clips_per_row)), "slots": n_placeholders})
            return original(model, input_ids, clips_per_row)

        embedder.inputs_embeds = spy

    def phases(self) -> set[str]:
        return {c["phase"] for c in self.calls}


def test_audio_reaches_generation_reference_and_loss(tmp_path, tiny_model_dir, pitch_data):
    session, trainer = make_trainer(
        tmp_path, tiny_model_dir, pitch_data, **{"grpo.beta": 0.04, "grpo.num_iterations": 2, "grpo.max_steps": 2}
    )
    spy = EmbedSpy(session.embedder)
    trainer.train()
    assert {"generate", "reference", "old_policy", "loss"} <= spy.phases()
    assert "other" not in spy.phases()
    for call in spy.calls:  # every forward carried one clip per row, filling every placeholder
        assert call["clips"] > 0 and call["slots"] > 0
    assert all(c["grad"] for c in spy.calls if c["phase"] == "loss")
    assert not any(c["grad"] for c in spy.calls if c["phase"] != "loss")


def test_encoder_runs_once_per_unique_clip_across_steps_and_epochs(tmp_path, tiny_model_dir, pitch_data):
    # 4 prompts, 2 per step, 6 steps = 3 epochs over the same 4 clips, 4 samples each
    session, trainer = make_trainer(
        tmp_path, tiny_model_dir, pitch_data,
        **{"data.max_train_samples": 4, "grpo.max_steps": 6, "grpo.beta": 0.04},
    )
    clips_through_encoder = []
    hook = session.lm.audio_encoder().register_forward_hook(lambda m, args, out: clips_through_encoder.append(args[0].shape[0]))
    try:
        trainer.train()
    finally:
        hook.remove()
    assert sum(clips_through_encoder) == 4
    assert session.embedder.stats["clips_encoded"] == 4
    assert session.embedder.stats["cache_hits"] > 0


@pytest.fixture(scope="module")
def scored_batch(tmp_path_factory, tiny_model_dir, pitch_data):
    tmp_path = tmp_path_factory.mktemp("batch")
    session, trainer = make_trainer(tmp_path, tiny_model_dir, pitch_data, **{"grpo.beta": 0.04})
    rows = [r for r in session.train_rows if r["label"] == "high"][:1] + [r for r in session.train_rows if r["label"] == "low"][:1]
    inputs = [row for row in rows for _ in range(trainer.num_generations)]
    trainer.model.train()
    batch = trainer._generate_and_score_completions(inputs)
    return session, trainer, batch


def _logps(trainer, batch, clips):
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad(), trainer._audio_for_rows(clips):
        logps, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, batch["completion_ids"].size(1))
    return logps * batch["completion_mask"]


def test_changing_the_audio_changes_policy_and_reference_logprobs(scored_batch):
    from trl.trainer.utils import use_adapter

    session, trainer, batch = scored_batch
    clips = batch["audio_clips"]
    swapped = clips[len(clips) // 2 :] + clips[: len(clips) // 2]  # high-tone rows get the low tone and back
    assert clips[0][0].key != swapped[0][0].key
    policy, policy_swapped = _logps(trainer, batch, clips), _logps(trainer, batch, swapped)
    assert (policy - policy_swapped).abs().max() > 1e-4
    with use_adapter(trainer.model, adapter_name="ref"):  # TRL's frozen copy of the initial adapter
        ref, ref_swapped = _logps(trainer, batch, clips), _logps(trainer, batch, swapped)
    assert (ref - ref_swapped).abs().max() > 1e-4
    # the stored reference log-probs are the ones computed with each row's own audio
    assert torch.allclose(batch["ref_per_token_logps"] * batch["completion_mask"], ref, atol=1e-5)


def test_changing_the_audio_changes_the_loss_and_its_gradient(scored_batch):
    session, trainer, batch = scored_batch
    batch = dict(batch)
    batch["advantages"] = torch.linspace(-1, 1, batch["advantages"].numel())  # a non-zero signal
    clips = batch["audio_clips"]
    swapped = {**batch, "audio_clips": clips[len(clips) // 2 :] + clips[: len(clips) // 2]}
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    trainer.current_gradient_accumulation_steps = trainer.args.gradient_accumulation_steps  # set by train()

    def loss_and_grad(inputs):
        trainer.model.zero_grad()
        loss = trainer._compute_loss(trainer.model, inputs)
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    loss_a, grad_a = loss_and_grad(batch)
    loss_b, grad_b = loss_and_grad(swapped)
    trainer.model.zero_grad()
    assert loss_a != pytest.approx(loss_b, abs=1e-7) or not torch.allclose(grad_a, grad_b)
    assert not torch.allclose(grad_a, grad_b)


def test_a_forward_without_audio_is_refused(scored_batch):
    _, trainer, batch = scored_batch
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with pytest.raises(RuntimeError, match="audio-aware forward without audio"):
        trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 4)


def test_advantages_come_from_the_registry(tmp_path, tiny_model_dir, pitch_data):
    session, trainer = make_trainer(tmp_path, tiny_model_dir, pitch_data, **{"grpo.advantage": "rloo"})
    rows = session.train_rows[:2]
    inputs = [row for row in rows for _ in range(trainer.num_generations)]
    batch = trainer._generate_and_score_completions(inputs)
    expected = ADVANTAGES.get("rloo")(trainer._last_rewards.float(), trainer.num_generations)
    assert torch.allclose(batch["advantages"], expected)
    assert len(batch["audio_clips"]) == len(inputs) and batch["audio_clips"][0][0].key == batch["audio_clips"][1][0].key


def test_rollout_engine_gets_current_weights_before_each_generation(tmp_path, tiny_model_dir, pitch_data):
    session, trainer = make_trainer(tmp_path, tiny_model_dir, pitch_data, **{"grpo.max_steps": 3})
    engine, events = session.engine, []
    for name in ("update_weights", "resume", "generate", "release"):
        original = getattr(engine, name)

        def recorder(*args, _name=name, _original=original):
            events.append((_name, trainer.state.global_step))
            return _original(*args)

        setattr(engine, name, recorder)
    trainer.train()
    # resume first: a sleeping vLLM (GPU sleep mode) must be awake to take the new weights
    expected = [(name, step) for step in range(3) for name in ("resume", "update_weights", "generate", "release")]
    assert events == expected
