"""PPO on the RL core: the critic is fed the policy's audio, rewards sit on the last token, the KL penalty
is a per-token reward, actor and critic have their own learning rates, critic warm-up holds the actor."""

from __future__ import annotations

import inspect
import os

import pytest
import torch
from audiorl.rl.config import load_recipe
from audiorl.rl.policy_gradient import PolicyGradientStage, Stats
from audiorl.rl.rollout import score
from audiorl.rl.train import RLRecipe

from tests.conftest import QUICKSTART, quick_overrides

PPO_RECIPE = os.path.join(os.path.dirname(QUICKSTART), "quickstart_ppo.yaml")


def ppo_overrides(tmp_path, tiny_model_dir, pitch_data, **extra):
    values = {
        "stages.sft.enabled": False, "stages.ppo.max_steps": 2, "stages.ppo.prompts_per_step": 4, "stages.ppo.num_generations": 2,
        "stages.ppo.micro_batch_size": 2, "stages.ppo.minibatches": 2, "stages.ppo.epochs": 2,
    }
    values.update(extra)
    overrides = quick_overrides(tmp_path, tiny_model_dir, pitch_data)
    overrides = [o for o in overrides if not o.startswith("stages.grpo.") and not o.startswith("stages.sft.")]
    return overrides + [f"{k}={v}" for k, v in values.items()]


def make_ppo(tmp_path, tiny_model_dir, pitch_data, **extra):
    recipe = RLRecipe(load_recipe(PPO_RECIPE, ppo_overrides(tmp_path, tiny_model_dir, pitch_data, **extra)))
    recipe.setup()
    stage = PolicyGradientStage(recipe, recipe.config.enabled_stages()[0])
    stage.setup()
    return recipe, stage


def test_critic_is_a_copy_of_the_language_model_fed_the_policys_audio(tmp_path, tiny_model_dir, pitch_data):
    recipe, stage = make_ppo(tmp_path, tiny_model_dir, pitch_data)
    policy_lm = recipe.lm.language_model(recipe.lm.model)
    assert stage.critic.backbone is not policy_lm
    assert all(p.requires_grad for p in stage.critic.parameters())
    calls = []
    original = recipe.embedder.audio_embeds

    def spy(model, clips, role="policy"):
        callers = {f.function for f in inspect.stack()[1:8]}
        calls.append((bool({"values", "critic_inputs"} & callers), role, torch.is_grad_enabled(), len(clips)))
        return original(model, clips, role)

    recipe.embedder.audio_embeds = spy
    stage.run()
    critic_calls = [c for c in calls if c[0]]
    assert critic_calls and all(role == "policy" and not grad and n > 0 for _, role, grad, n in critic_calls)
    # changing the audio changes the critic's values
    batch = stage.rollouts.generate(recipe.train_rows[:2], 2)
    seqs = batch.sequences()
    swapped = type(seqs)(seqs.input_ids, seqs.attention_mask, [batch.clips[2], batch.clips[3], batch.clips[0], batch.clips[1]], seqs.start)
    with torch.no_grad():
        stage.critic.head.weight.normal_(0, 0.1)  # the head starts at zero (every value 0): give it something to read
        a = recipe.forward.values(stage.critic, recipe.lm.model, seqs)
        b = recipe.forward.values(stage.critic, recipe.lm.model, swapped)
    assert (a - b).abs().max() > 1e-5


def test_rewards_on_the_last_token_kl_in_the_reward_and_gae(tmp_path, tiny_model_dir, pitch_data):
    recipe, stage = make_ppo(tmp_path, tiny_model_dir, pitch_data, **{"stages.ppo.beta": 0.1})
    batch = stage.rollouts.generate(recipe.train_rows[:2], 2)
    score(batch, stage.rewards)
    batch.total = torch.tensor([1.0, 0.0, float("nan"), 0.5])
    with torch.no_grad():
        for name, p in recipe.lm.model.named_parameters():  # the policy moves away from its reference
            if "lora_B" in name:
                p.normal_(0, 0.05)
    stage.prepare(batch, Stats())
    mask = batch.completion_mask.float()
    kl = (batch.old_logps - batch.ref_logps) * mask  # k1
    assert kl.abs().max() > 1e-4
    last = batch.completion_mask.sum(1) - 1
    expected = -0.1 * kl
    for i, value in enumerate([1.0, 0.0, 0.0, 0.5]):
        expected[i, last[i]] += value
    assert torch.allclose(batch.token_rewards, expected, atol=1e-6)
    assert batch.advantages.shape == batch.completion_ids.shape  # per-token (GAE), whitened over the loss tokens
    from audiorl.rl.algos import ADVANTAGES, AdvantageInputs

    gae = ADVANTAGES.get("gae")(AdvantageInputs(batch.total, mask=mask, token_rewards=batch.token_rewards, values=batch.values, gamma=1.0, lam=0.95))
    assert torch.allclose(batch.returns, gae + batch.values * mask, atol=1e-6)
    valid = batch.loss_mask.bool()
    assert batch.advantages[valid].mean().abs() < 1e-5 and batch.advantages[valid].std() == pytest.approx(1.0, abs=1e-3)
    assert batch.loss_mask[2].sum() == 0 and batch.loss_mask[0].sum() > 0  # no reward applied: no signal


def test_actor_and_critic_learn_at_their_own_rates_and_warmup_holds_the_actor(tmp_path, tiny_model_dir, pitch_data):
    recipe, stage = make_ppo(
        tmp_path, tiny_model_dir, pitch_data,
        **{"stages.ppo.learning_rate": 3e-4, "stages.ppo.critic.learning_rate": 2e-5, "stages.ppo.critic.warmup_steps": 1,
           "rewards.0.name": "tests.reward_plugins:length_penalty"},  # rewards that vary from the first step
    )
    assert stage.optimizer.param_groups[0]["lr"] == pytest.approx(3e-4)
    assert stage.critic_optimizer.param_groups[0]["lr"] == pytest.approx(2e-5)
    actor = {n: p.detach().clone() for n, p in recipe.lm.model.named_parameters() if p.requires_grad}
    critic = {n: p.detach().clone() for n, p in stage.critic.named_parameters()}
    metrics = stage.step(0)  # a warm-up iteration: only the critic moves
    assert all(torch.equal(actor[n], p) for n, p in recipe.lm.model.named_parameters() if p.requires_grad)
    assert any(not torch.equal(critic[n], p) for n, p in stage.critic.named_parameters())
    assert "value_loss" in metrics and "loss" not in metrics
    metrics = stage.step(1)
    assert any(not torch.equal(actor[n], p) for n, p in recipe.lm.model.named_parameters() if p.requires_grad)
    assert {"loss", "value_loss", "explained_variance", "clip_ratio/region_mean", "entropy", "kl_penalty"} <= set(metrics)


def test_shared_base_critic_is_a_second_adapter_never_synced_or_saved(tmp_path, tiny_model_dir, pitch_data):
    recipe, stage = make_ppo(
        tmp_path, tiny_model_dir, pitch_data,
        **{"stages.ppo.critic.model": "shared_base", "rewards.0.name": "tests.reward_plugins:length_penalty"},
    )
    model = recipe.lm.model
    assert stage.critic.shared and "critic" in model.peft_config and stage.critic.backbone is None
    assert not {id(p) for p in stage.params} & {id(p) for p in stage.critic_params}  # one optimizer each
    named = dict(model.named_parameters())
    critic_adapter = {n: p.detach().clone() for n, p in named.items() if ".critic." in n}
    policy_adapter = {n: p.detach().clone() for n, p in named.items() if ".default." in n}
    base = {n: p.detach().clone() for n, p in named.items() if "base_layer" in n}
    head = stage.critic.head.weight.detach().clone()
    stage.step(0)
    stage.step(1)
    assert any(not torch.equal(critic_adapter[n], named[n]) for n in critic_adapter)
    assert any(not torch.equal(policy_adapter[n], named[n]) for n in policy_adapter)
    assert all(torch.equal(base[n], named[n]) for n in base)  # one language model, never trained in full
    assert not torch.equal(head, stage.critic.head.weight)
    assert model.active_adapter == "default"
    synced = recipe.lm.hub_state_dict(model)  # what vLLM and the merged checkpoint get
    stage.critic.close()
    assert "critic" not in model.peft_config
    without = recipe.lm.hub_state_dict(model)
    assert synced.keys() == without.keys() and all(torch.equal(synced[k], without[k]) for k in synced)


def test_shared_base_critic_needs_lora(tmp_path, tiny_model_dir, pitch_data):
    from audiorl.common.errors import ConfigError

    with pytest.raises(ConfigError, match="'shared_base', which needs lora.enabled: true"):
        load_recipe(PPO_RECIPE, ppo_overrides(tmp_path, tiny_model_dir, pitch_data, **{"stages.ppo.critic.model": "shared_base", "lora.enabled": False}))
