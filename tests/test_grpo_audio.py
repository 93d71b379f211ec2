"""Audio reaches every forward of GRPO on the RL core (generation, old policy, reference, loss); the encoder
runs once per clip; a trainable encoder's cached outputs are never served to the wrong weights."""

from __future__ import annotations

import inspect

import pytest
import torch
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.model.forward import AudioForward, Sequences
from audiorl.rl.algos import ADVANTAGES, AdvantageInputs
from audiorl.rl.config import load_recipe
from audiorl.rl.policy_gradient import PolicyGradientStage
from audiorl.rl.rollout import score
from audiorl.rl.train import RLRecipe

from tests.conftest import QUICKSTART, quick_overrides


def make_stage(tmp_path, tiny_model_dir, pitch_data, **extra):
    """A GRPO stage on the tiny model, set up (LoRA applied, optimizer built), SFT off unless asked."""
    extra.setdefault("stages.sft.enabled", False)
    recipe = RLRecipe(load_recipe(QUICKSTART, quick_overrides(tmp_path, tiny_model_dir, pitch_data, **extra)))
    recipe.setup()
    stage = PolicyGradientStage(recipe, next(s for s in recipe.config.enabled_stages() if s.algorithm == "grpo"))
    stage.setup()
    return recipe, stage


class EmbedSpy:
    """Records every call that puts audio into a forward: which phase, which role, grad mode, how many clips."""

    def __init__(self, embedder):
        self.calls = []
        original = embedder.audio_embeds

        def spy(model, clips, role="policy"):
            callers = {f.function for f in inspect.stack()[1:14]}
            phase = (
                "generate" if "_generate_chunk" in callers
                else "loss" if "policy_loss" in callers
                else "reference" if role == "reference"
                else "old_policy" if "prepare" in callers
                else "other"
            )
            self.calls.append({"phase": phase, "role": role, "grad": torch.is_grad_enabled(), "clips": len(clips)})
            return original(model, clips, role)

        embedder.audio_embeds = spy

    def phases(self) -> set[str]:
        return {c["phase"] for c in self.calls}


@pytest.mark.parametrize("frozen", [True, False])
def test_audio_reaches_generation_old_policy_reference_and_loss(tmp_path, tiny_model_dir, pitch_data, frozen):
    recipe, stage = make_stage(
        tmp_path, tiny_model_dir, pitch_data,
        **{"stages.grpo.beta": 0.04, "stages.grpo.epochs": 2, "stages.grpo.max_steps": 2, "model.freeze_audio_encoder": frozen},
    )
    spy = EmbedSpy(recipe.embedder)
    stage.run()
    assert {"generate", "reference", "old_policy", "loss"} <= spy.phases()
    assert "other" not in spy.phases()
    assert all(c["clips"] > 0 for c in spy.calls)  # every forward carried its rows' clips
    assert all(c["grad"] for c in spy.calls if c["phase"] == "loss")
    assert not any(c["grad"] for c in spy.calls if c["phase"] != "loss")
    assert {c["role"] for c in spy.calls if c["phase"] == "reference"} == {"reference"}


def test_encoder_runs_once_per_unique_clip_across_steps_and_epochs(tmp_path, tiny_model_dir, pitch_data):
    # 4 prompts, 2 per step, 6 steps = 3 epochs over the same 4 clips, 4 samples each
    recipe, stage = make_stage(
        tmp_path, tiny_model_dir, pitch_data,
        **{"data.max_train_samples": 4, "stages.grpo.max_steps": 6, "stages.grpo.beta": 0.04},
    )
    clips_through_encoder = []
    hook = recipe.lm.audio_encoder().register_forward_hook(lambda m, args, out: clips_through_encoder.append(args[0].shape[0]))
    try:
        stage.run()
    finally:
        hook.remove()
    assert sum(clips_through_encoder) == 4
    assert recipe.embedder.stats["clips_encoded"] == 4
    assert recipe.embedder.stats["cache_hits"] > 0


@pytest.fixture(scope="module")
def scored_batch(tmp_path_factory, tiny_model_dir, pitch_data):
    tmp_path = tmp_path_factory.mktemp("batch")
    recipe, stage = make_stage(tmp_path, tiny_model_dir, pitch_data, **{"stages.grpo.beta": 0.04})
    rows = [r for r in recipe.train_rows if r["label"] == "high"][:1] + [r for r in recipe.train_rows if r["label"] == "low"][:1]
    batch = stage.rollouts.generate(rows, stage.config.num_generations)
    score(batch, stage.rewards)
    with torch.no_grad():
        for name, p in recipe.lm.model.named_parameters():  # a policy that differs from its reference
            if "lora_B" in name:
                p.normal_(0, 0.05)
    recipe.weights_changed()
    from audiorl.rl.policy_gradient import Stats

    stage.prepare(batch, Stats())
    return recipe, stage, batch


def _swapped(batch):
    half = len(batch.clips) // 2
    return batch.clips[half:] + batch.clips[:half]  # high-tone rows get the low tone and back


def _logps(recipe, batch, clips, reference=None):
    seqs = Sequences(batch.sequences().input_ids, batch.sequences().attention_mask, clips, batch.prompt_ids.size(1))
    with torch.no_grad():
        if reference is not None:
            return reference.token_logps(recipe.forward, recipe.lm.model, seqs) * batch.completion_mask
        return recipe.forward.token_logps(recipe.lm.model, seqs, "policy")[0] * batch.completion_mask


def test_changing_the_audio_changes_policy_and_reference_logprobs(scored_batch):
    recipe, stage, batch = scored_batch
    swapped = _swapped(batch)
    assert batch.clips[0][0].key != swapped[0][0].key
    policy, policy_swapped = _logps(recipe, batch, batch.clips), _logps(recipe, batch, swapped)
    assert (policy - policy_swapped).abs().max() > 1e-4
    ref, ref_swapped = _logps(recipe, batch, batch.clips, stage.reference), _logps(recipe, batch, swapped, stage.reference)
    assert (ref - ref_swapped).abs().max() > 1e-4
    assert (policy - ref).abs().max() > 1e-3  # the reference is not the trained policy
    # the stored reference log-probs are the ones computed with each row's own audio
    assert torch.allclose(batch.ref_logps * batch.completion_mask, ref, atol=1e-5)


def test_changing_the_audio_changes_the_loss_and_its_gradient(scored_batch):
    from dataclasses import replace

    from audiorl.rl.algos import AggregationContext
    from audiorl.rl.policy_gradient import Stats

    recipe, stage, batch = scored_batch
    batch = replace(batch, advantages=torch.linspace(-1, 1, len(batch)))  # a non-zero signal
    swapped = replace(batch, clips=_swapped(batch))
    params = [p for p in recipe.lm.model.parameters() if p.requires_grad]
    ctx = AggregationContext(step_tokens=float(batch.loss_mask.sum()), max_completion_length=12)

    def loss_and_grad(b):
        recipe.lm.model.zero_grad()
        loss = stage.policy_loss(b, ctx, Stats())
        loss.backward()
        return loss.item(), torch.cat([p.grad.flatten() for p in params if p.grad is not None])

    loss_a, grad_a = loss_and_grad(batch)
    loss_b, grad_b = loss_and_grad(swapped)
    recipe.lm.model.zero_grad()
    assert not torch.allclose(grad_a, grad_b)


def test_a_forward_without_audio_is_refused(scored_batch):
    recipe, _, batch = scored_batch
    seqs = batch.sequences()
    with pytest.raises(ValueError, match="audio-aware forward: 8 rows of tokens but audio for 0 rows"):
        Sequences(seqs.input_ids, seqs.attention_mask, [], seqs.start)
    with pytest.raises(ValueError, match="audio-aware forward"):
        recipe.forward.model_inputs(recipe.lm.model, seqs.input_ids, seqs.attention_mask, seqs.clips[:2], "policy")


def test_advantages_come_from_the_registry(tmp_path, tiny_model_dir, pitch_data):
    from audiorl.rl.policy_gradient import Stats

    recipe, stage = make_stage(tmp_path, tiny_model_dir, pitch_data, **{"stages.grpo.advantage": "rloo"})
    batch = stage.rollouts.generate(recipe.train_rows[:2], stage.config.num_generations)
    batch.total = torch.tensor([1.0, 0.0, 0.5, 0.0, 0.2, 0.9, 0.0, 0.3])  # varied rewards
    stage.prepare(batch, Stats())
    expected = ADVANTAGES.get("rloo")(AdvantageInputs(batch.total, stage.config.num_generations))
    assert torch.allclose(batch.advantages, expected)
    assert batch.clips[0][0].key == batch.clips[1][0].key and batch.clips[0][0].key != batch.clips[4][0].key


def test_rollout_engine_gets_current_weights_before_each_generation(tmp_path, tiny_model_dir, pitch_data):
    recipe, stage = make_stage(tmp_path, tiny_model_dir, pitch_data, **{"stages.grpo.max_steps": 3})
    engine, events = recipe.engine, []
    for name in ("update_weights", "resume", "generate", "release"):
        original = getattr(engine, name)

        def recorder(*args, _name=name, _original=original):
            events.append((_name, recipe.global_step))
            return _original(*args)

        setattr(engine, name, recorder)
    stage.run()
    # resume first: a sleeping vLLM (GPU sleep mode) must be awake to take the new weights
    expected = [(name, step) for step in range(3) for name in ("resume", "update_weights", "generate", "release")]
    assert events == expected


def test_trainable_encoder_reference_is_never_served_the_policys_cached_audio(tmp_path, tiny_model_dir, pitch_data):
    """With the encoder unfrozen and beta > 0, the reference forward must see the reference's encoder.

    On the former TRL subclass (cache keyed by the id of a module wrapper that the policy adapter and
    TRL's reference adapter share) this failed: after 3 steps the stored reference log-probs were off
    by up to 5.25 nats per token (the same steps, recipe and reward as here).
    """
    from audiorl.rl.policy_gradient import Stats

    recipe, stage = make_stage(tmp_path, tiny_model_dir, pitch_data, **{
        "stages.grpo.beta": 0.04, "model.freeze_audio_encoder": False, "stages.grpo.learning_rate": 5e-3,
        "stages.grpo.max_steps": 3, "rollout.max_new_tokens": 32, "rewards.0.name": "tests.reward_plugins:length_penalty",
    })
    stage.run()
    assert recipe.embedder.versions["policy"] > 1
    batch = stage.rollouts.generate(recipe.train_rows[:2], stage.config.num_generations)
    score(batch, stage.rewards)
    stage.prepare(batch, Stats())  # the engine's generation cached the policy's encoder outputs first
    fresh = AudioForward(recipe.lm, AudioEmbedder(recipe.lm, recipe.store))  # no cache at all
    seqs = batch.sequences()
    true_ref = stage.reference.token_logps(fresh, recipe.lm.model, seqs)
    policy = fresh.token_logps(recipe.lm.model, seqs, "policy")[0]
    mask = batch.completion_mask.bool()
    assert (policy - true_ref)[mask].abs().max() > 0.1  # the encoders really differ by now
    assert (batch.ref_logps - true_ref)[mask].abs().max() < 1e-5
