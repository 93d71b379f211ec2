"""The ``grpo`` and ``ppo`` stages: one policy-gradient core, the algorithm chosen by registry entries.

Each iteration: sample prompts -> the engine generates ``num_generations`` completions of each ->
the rewards score them -> no-grad forwards (old policy, reference, critic) where the update needs
them -> advantages from the registry -> ``epochs`` passes of ``minibatches`` optimizer steps, each
over micro-batches whose per-token policy loss and aggregation come from the registries.

GRPO and PPO differ only in their entries and defaults: GRPO uses a group advantage and (if any)
a KL term in the loss; PPO a critic (``model/critic.py``), per-token GAE and a KL penalty in the
reward, as in classic RLHF. Rewards keep their contract (one value per completion); PPO places
it on the completion's last token.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import torch
from audiorl.rl.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    VALUE_LOSSES,
    AdvantageInputs,
    AggregationContext,
    PolicyLossInputs,
)
from audiorl.rl.batch import TOKEN_ROLES, RolloutBatch, parts_loss_mask
from audiorl.rl.reference import Reference
from audiorl.rl.rollout import Rollouts, reward_metrics, score
from audiorl.rl.sampler import RowSampler
from audiorl.rl.stage_config import PPOConfig
from audiorl.rl.timing import PhaseTimer
from audiorl.rollouts.base import SamplingParams


def masked_whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the entries where ``mask`` is set; 0 elsewhere."""
    m = mask.to(values.dtype)
    n = m.sum().clamp(min=1.0)
    mean = (values * m).sum() / n
    var = (((values - mean) * m) ** 2).sum() / (n - 1).clamp(min=1.0)
    return (values - mean) * torch.rsqrt(var + eps) * m


class Stats:
    """Token-weighted sums and maxima gathered over the micro-batches of one iteration."""

    def __init__(self) -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.counts: dict[str, float] = defaultdict(float)
        self.maxima: dict[str, float] = {}
        self.values: dict[str, list[float]] = defaultdict(list)

    def add(self, name: str, x: torch.Tensor, mask: torch.Tensor) -> None:
        m = mask.to(torch.float32)
        self.sums[name] += float((x.detach().float() * m).sum())
        self.counts[name] += float(m.sum())

    def max(self, name: str, value: float) -> None:
        self.maxima[name] = max(self.maxima.get(name, -math.inf), value)

    def record(self, name: str, value: float) -> None:
        self.values[name].append(value)

    def metrics(self) -> dict[str, float]:
        out = {k: self.sums[k] / self.counts[k] for k in self.sums if self.counts[k] > 0}
        out.update({k: v for k, v in self.maxima.items() if math.isfinite(v)})
        out.update({k: sum(v) / len(v) for k, v in self.values.items() if v})
        return out


class PolicyGradientStage:
    def __init__(self, run: Any, config: Any):
        self.run_ = run
        self.config = config
        self.is_ppo = isinstance(config, PPOConfig)
        self.advantage_fn = ADVANTAGES.get(config.advantage)
        self.policy_loss_fn = POLICY_LOSSES.get(config.policy_loss)
        self.aggregate = LOSS_AGGREGATIONS.get(config.loss_aggregation)
        self.kl_fn = KL_ESTIMATORS.get(config.kl_estimator)
        self.value_loss_fn = VALUE_LOSSES.get(config.critic.value_loss) if self.is_ppo else None
        self.updates_per_batch = config.epochs * config.minibatches
        self.epsilon_high = config.epsilon if config.epsilon_high is None else config.epsilon_high
        self.ready = False

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        from audiorl.model.critic import Critic

        run, cfg = self.run_, self.config
        run.seed_everything()
        self.rewards = run.reward_set(cfg)
        shared = self.is_ppo and cfg.critic.model == "shared_base"
        # A copied critic is taken before the policy's adapter exists: it starts from the stage's weights.
        self.critic = Critic.copy_of(run.lm, run.lm.model) if self.is_ppo and not shared else None
        run.apply_lora()
        self.reference = Reference(run.lm.model) if cfg.beta > 0 else None
        total_steps = cfg.max_steps * self.updates_per_batch
        self.optimizer, self.scheduler, self.params = run.build_optimizer(run.lm.model.parameters(), cfg, total_steps)
        if shared:  # added after the policy's optimizer exists, which therefore never holds the critic's adapter
            self.critic = Critic.shared_base(run.lm, run.lm.model, run.lora_config(with_modules_to_save=False))
        if self.critic is not None:
            self.critic_optimizer, self.critic_scheduler, self.critic_params = run.build_optimizer(
                self.critic.trainable_parameters(), cfg.critic, total_steps, only_trainable=False
            )
        self.sampler = RowSampler(run.train_rows, run.config.seed)
        rollout = run.config.rollout
        self.sampling = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p, rollout.top_k)
        self.rollouts = Rollouts(run.lm, run.prompts, run.engine, self.sampling, run.sync_engine)
        self.generator = torch.Generator().manual_seed(run.config.seed)
        self.ready = True

    # -------------------------------------------------------------------- run
    def run(self) -> None:
        if not self.ready:
            self.setup()
        try:
            self.run_.run_steps(self.config, self.step)
        finally:
            if self.critic is not None:
                self.critic.close()

    def step(self, iteration: int) -> dict[str, float]:
        run, cfg = self.run_, self.config
        timer = PhaseTimer()
        model = run.lm.model
        model.train()
        with timer("generation"):
            rows = self.sampler.next(cfg.prompts_per_step)
            batch = self.rollouts.generate(rows, cfg.num_generations)
            if set(cfg.loss_on) != set(TOKEN_ROLES):
                batch.loss_mask = parts_loss_mask(run.lm, batch.completion_ids, batch.completion_mask, cfg.loss_on)
        with timer("rewards"):
            scores = score(batch, self.rewards)
        metrics = reward_metrics(batch, scores)
        stats = Stats()
        with timer("forward_backward"), timer("no_grad_forward"):
            self.prepare(batch, stats)
        self.update(batch, iteration, stats, timer)
        metrics.update(stats.metrics())
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        metrics.update(timer.metrics())
        return metrics

    # ------------------------------------------------------------- no-grad pass
    def _chunks(self, batch: RolloutBatch):
        for start in range(0, len(batch), self.config.micro_batch_size):
            yield start, batch.select(range(start, min(start + self.config.micro_batch_size, len(batch))), trim=False)

    @torch.no_grad()
    def _per_token(self, batch: RolloutBatch, fn) -> torch.Tensor:
        out = torch.zeros(batch.completion_ids.shape, dtype=torch.float32)
        for start, micro in self._chunks(batch):
            out[start : start + len(micro)] = fn(micro).float().cpu()
        return out

    def prepare(self, batch: RolloutBatch, stats: Stats) -> None:
        """The no-grad forwards the update needs, then the advantages."""
        self.no_grad_forwards(batch, stats)
        self.advantages(batch, stats)

    def no_grad_forwards(self, batch: RolloutBatch, stats: Stats) -> None:
        """Old-policy log-probs (several updates per batch, or a KL in the reward), reference log-probs, values."""
        run, cfg = self.run_, self.config
        model, forward, temperature = run.lm.model, run.forward, self.sampling.temperature
        if self.updates_per_batch > 1 or (cfg.beta > 0 and cfg.kl_in == "reward"):
            batch.old_logps = self._per_token(batch, lambda m: forward.token_logps(model, m.sequences(), "policy", temperature)[0])
            self._log_rollout_gap(batch.old_logps, batch, stats)
        if self.reference is not None:
            batch.ref_logps = self._per_token(batch, lambda m: self.reference.token_logps(forward, model, m.sequences(), temperature))
        if self.critic is not None:
            batch.values = self._per_token(batch, lambda m: forward.values(self.critic, model, m.sequences()))

    def advantages(self, batch: RolloutBatch, stats: Stats) -> None:
        """Scores (whitened, KL-shaped) -> the registry's advantages: per completion (group estimators) or per token (gae)."""
        cfg = self.config
        kl_in_reward = cfg.beta > 0 and cfg.kl_in == "reward"
        mask = batch.completion_mask.float()
        rewards = batch.total.clone()
        valid = ~torch.isnan(rewards)
        if cfg.whiten_rewards and valid.sum() > 1:
            rewards[valid] = (rewards[valid] - rewards[valid].mean()) / (rewards[valid].std() + 1e-8)
        kl = None
        if kl_in_reward:
            kl = self.kl_fn(batch.old_logps, batch.ref_logps) * mask
            stats.add("kl", kl, mask)
            stats.record("kl_penalty", float(cfg.beta * kl.sum(1).mean()))
        if self.critic is not None:
            token_rewards = torch.zeros_like(mask)
            last = (batch.completion_mask.sum(1) - 1).clamp(min=0)
            token_rewards[torch.arange(len(batch)), last] = torch.nan_to_num(rewards, nan=0.0)
            if kl is not None:
                token_rewards = token_rewards - cfg.beta * kl
            batch.token_rewards = token_rewards
            advantages = self.advantage_fn(AdvantageInputs(
                rewards=rewards, group_size=cfg.num_generations, mask=mask, token_rewards=token_rewards,
                values=batch.values, gamma=cfg.gamma, lam=cfg.lam,
            ))
            batch.returns = advantages + batch.values * mask
            batch.loss_mask = batch.loss_mask * valid.unsqueeze(1).long()  # no reward applied: no signal
            self._log_values(batch, stats)
        else:
            seq_rewards = rewards - cfg.beta * kl.sum(1) if kl is not None else rewards
            advantages = self.advantage_fn(AdvantageInputs(rewards=seq_rewards, group_size=cfg.num_generations, mask=mask))
        if cfg.whiten_advantages:
            adv_mask = batch.loss_mask if advantages.dim() == 2 else valid
            advantages = masked_whiten(advantages, adv_mask)
        batch.advantages = advantages.to(torch.float32)

    def _log_values(self, batch: RolloutBatch, stats: Stats) -> None:
        m = batch.loss_mask.bool()
        if not m.any():
            return
        values, returns = batch.values[m], batch.returns[m]
        var = returns.var()
        stats.record("values/mean", float(values.mean()))
        stats.record("returns/mean", float(returns.mean()))
        if var > 0:
            stats.record("explained_variance", float(1 - (returns - values).var() / var))

    def _log_rollout_gap(self, trainer_logps: torch.Tensor, micro: RolloutBatch, stats: Stats) -> None:
        """Rollout-engine vs trainer log-probs of the sampled tokens (engines with their own weights, e.g. vLLM)."""
        if self.run_.engine.samples_from_trainer_model or micro.sampling_logps is None:
            return
        diff = (trainer_logps.detach().float().cpu() - micro.sampling_logps)
        valid = micro.completion_mask.bool() & ~torch.isnan(diff)
        if valid.any():
            gap = diff.abs()
            stats.add("rollout/logprob_diff/mean", gap.nan_to_num(0.0), valid)
            stats.max("rollout/logprob_diff/max", float(gap[valid].max()))

    # ------------------------------------------------------------------ update
    def update(self, batch: RolloutBatch, iteration: int, stats: Stats, timer: PhaseTimer) -> None:
        run, cfg = self.run_, self.config
        n = len(batch)
        per_minibatch = n // cfg.minibatches
        train_policy = not (self.is_ppo and iteration < cfg.critic.warmup_steps)
        for _ in range(cfg.epochs):
            order = torch.randperm(n, generator=self.generator) if self.updates_per_batch > 1 else torch.arange(n)
            for m in range(cfg.minibatches):
                index = order[m * per_minibatch : (m + 1) * per_minibatch]
                ctx = AggregationContext(
                    micro_batches=-(-per_minibatch // cfg.micro_batch_size),
                    step_tokens=float(batch.loss_mask[index].sum()),
                    max_completion_length=run.config.rollout.max_new_tokens,
                )
                step_loss = 0.0
                with timer("forward_backward"):
                    for chunk in index.split(cfg.micro_batch_size):
                        micro = batch.select(chunk)
                        if train_policy:
                            loss = self.policy_loss(micro, ctx, stats)
                            run.accelerator.backward(loss)
                            step_loss += float(loss.detach())
                        if self.critic is not None:
                            inputs = run.forward.critic_inputs(run.lm.model, micro.sequences())
                            with self.critic.active():  # a shared critic's adapter takes the gradient
                                run.accelerator.backward(self.value_loss(micro, inputs, ctx, stats))
                with timer("optimizer"):
                    if train_policy:
                        stats.record("grad_norm", run.optimizer_step(self.optimizer, self.scheduler, self.params, cfg.max_grad_norm))
                        stats.record("loss", step_loss)
                        run.weights_changed()
                    else:
                        self.optimizer.zero_grad(set_to_none=True)
                    if self.critic is not None:
                        stats.record("critic/grad_norm", run.optimizer_step(
                            self.critic_optimizer, self.critic_scheduler, self.critic_params, cfg.critic.max_grad_norm
                        ))

    def policy_loss(self, micro: RolloutBatch, ctx: AggregationContext, stats: Stats) -> torch.Tensor:
        """This micro-batch's share of the step's policy loss (KL and TIS included), and its statistics."""
        run, cfg = self.run_, self.config
        model = run.lm.model
        device = next(model.parameters()).device
        logps, entropy = run.forward.token_logps(model, micro.sequences(), "policy", self.sampling.temperature, with_entropy=True)
        mask = micro.loss_mask.to(device, logps.dtype)
        if micro.old_logps is None:  # one update per batch: the weights that sampled are the weights here
            old = logps.detach()
            self._log_rollout_gap(old, micro, stats)
        else:
            old = micro.old_logps.to(device)
        out = self.policy_loss_fn(PolicyLossInputs(
            logps=logps, old_logps=old, advantages=micro.advantages.to(device), mask=mask,
            epsilon_low=cfg.epsilon, epsilon_high=self.epsilon_high,
        ))
        per_token = out.per_token
        if cfg.tis_cap is not None and micro.sampling_logps is not None:
            diff = old - micro.sampling_logps.to(device)
            valid = mask.bool() & ~torch.isnan(diff)
            ratio = torch.exp(diff.masked_fill(~valid, 0.0)).clamp(max=cfg.tis_cap)
            per_token = per_token * ratio
            stats.add("rollout/tis_ratio/mean", ratio, valid)
        if cfg.beta > 0 and cfg.kl_in == "loss":
            kl = self.kl_fn(logps, micro.ref_logps.to(device))
            stats.add("kl", kl, mask)
            if cfg.kl_bias_correction:
                kl = kl * out.ratio
            per_token = per_token + cfg.beta * kl
        stats.add("entropy", entropy, mask)
        token_shape = torch.ones_like(mask)
        stats.add("clip_ratio/low_mean", out.clipped_low.float() * token_shape, mask)
        stats.add("clip_ratio/high_mean", out.clipped_high.float() * token_shape, mask)
        stats.add("clip_ratio/region_mean", (out.clipped_low | out.clipped_high).float() * token_shape, mask)
        return self.aggregate(per_token, mask, ctx)

    def value_loss(self, micro: RolloutBatch, inputs: dict, ctx: AggregationContext, stats: Stats) -> torch.Tensor:
        run = self.run_
        values = run.forward.values(self.critic, run.lm.model, micro.sequences(), inputs)
        device = values.device
        mask = micro.loss_mask.to(device, values.dtype)
        per_token, clipped = self.value_loss_fn(values, micro.values.to(device), micro.returns.to(device), self.config.critic.value_clip)
        stats.add("value_loss", per_token, mask)
        stats.add("value_clip_ratio", clipped.float(), mask)
        return (per_token * mask).sum() / max(ctx.step_tokens, 1.0)
