"""The ``dpo`` stage: preference optimisation against a frozen reference, offline or online.

* offline: pairs from a data file (prompt with audio, chosen, rejected; ``data/preferences.py``);
* online (iterative DPO): each step the engine samples ``num_generations`` completions of each
  prompt, the rewards rank them, and the best and worst of a group make a pair; a group whose
  best and worst differ by no more than ``min_margin`` gives none (counted as ``dpo/skipped_groups``).

The loss comes from the preference-loss registry; its log-probs are summed over the completion
tokens whose role (text, think, audio codes) is in ``loss_on``. The reference is the adapter-
disabled policy (LoRA) or a frozen copy of the stage's starting weights.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from audiorl.rl.algos import PREFERENCE_LOSSES, PreferenceInputs
from audiorl.rl.batch import PairBatch, RolloutBatch, parts_loss_mask
from audiorl.rl.policy_gradient import Stats
from audiorl.rl.reference import Reference
from audiorl.rl.rollout import Rollouts, reward_metrics, score
from audiorl.rl.sampler import RowSampler
from audiorl.rl.timing import PhaseTimer
from audiorl.rollouts.base import SamplingParams


class DPOStage:
    def __init__(self, run: Any, config: Any):
        self.run_ = run
        self.config = config
        self.loss_fn = PREFERENCE_LOSSES.get(config.loss)
        self.average = bool(getattr(self.loss_fn, "average_logps", False))
        self.ready = False

    def setup(self) -> None:
        from audiorl.data.preferences import load_pairs

        run, cfg = self.run_, self.config
        run.seed_everything()
        self.rewards = run.reward_set(cfg)
        if cfg.source == "offline":
            pairs = getattr(run, "stage_pairs", {}).get(cfg.name)  # read and checked in the recipe's setup, before load
            if pairs is None:
                d = run.config.data
                pairs = load_pairs(
                    cfg.pairs, chosen_column=cfg.chosen_column, rejected_column=cfg.rejected_column, audio_column=d.audio_column,
                    prompt_column=d.prompt_column, system_prompt=d.system_prompt, on_bad_audio=d.on_bad_audio,
                )
            self.sampler = RowSampler(pairs, run.config.seed)
        else:
            self.sampler = RowSampler(run.train_rows, run.config.seed)
        run.apply_lora()
        self.reference = Reference(run.lm.model, cfg.reference)
        self.optimizer, self.scheduler, self.params = run.build_optimizer(run.lm.model.parameters(), cfg, cfg.max_steps)
        rollout = run.config.rollout
        self.sampling = SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p, rollout.top_k)
        self.rollouts = Rollouts(run.lm, run.prompts, run.engine, self.sampling, run.sync_engine)
        self.ready = True

    def run(self) -> None:
        if not self.ready:
            self.setup()
        self.run_.run_steps(self.config, self.step)

    # ----------------------------------------------------------------- pairs
    def _loss_mask(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return parts_loss_mask(self.run_.lm, ids, mask, self.config.loss_on)

    def _build(self, prompts: list[list[int]], chosen: list[list[int]], rejected: list[list[int]], clips: list) -> PairBatch:
        pairs = PairBatch.build(prompts, chosen, rejected, clips, self.run_.lm.tokenizer.pad_token_id)
        pairs.chosen_loss_mask = self._loss_mask(pairs.chosen_ids, pairs.chosen_mask)
        pairs.rejected_loss_mask = self._loss_mask(pairs.rejected_ids, pairs.rejected_mask)
        return pairs

    def pairs_from_rollouts(self, batch: RolloutBatch, stats: Stats) -> PairBatch | None:
        """Best vs worst completion of each group by total reward; groups without a margin are skipped."""
        prompts, chosen, rejected, clips = [], [], [], []
        skipped = 0
        for g in torch.unique(batch.group_ids).tolist():
            rows = (batch.group_ids == g).nonzero().flatten().tolist()
            totals = [(float(batch.total[i]), i) for i in rows if not math.isnan(float(batch.total[i]))]
            if len(totals) < 2 or max(totals)[0] - min(totals)[0] <= self.config.min_margin:
                skipped += 1
                continue
            best, worst = max(totals)[1], min(totals)[1]
            prompts.append(batch.prompt_ids[best][batch.prompt_mask[best].bool()].tolist())
            chosen.append(batch.completion_ids[best][batch.completion_mask[best].bool()].tolist())
            rejected.append(batch.completion_ids[worst][batch.completion_mask[worst].bool()].tolist())
            clips.append(batch.clips[best])
        stats.record("dpo/skipped_groups", float(skipped))
        stats.record("dpo/pairs", float(len(prompts)))
        return self._build(prompts, chosen, rejected, clips) if prompts else None

    def pairs_from_rows(self, rows: list[dict], stats: Stats) -> PairBatch:
        encoder = self.run_.prompts
        prompts, chosen, rejected, clips = [], [], [], []
        for row in rows:
            ids, row_clips = encoder.encode(row["prompt"], row=row.get("_row"))
            prompts.append(ids)
            chosen.append(encoder.completion_ids(row["chosen"]))
            rejected.append(encoder.completion_ids(row["rejected"]))
            clips.append(row_clips)
        stats.record("dpo/pairs", float(len(prompts)))
        return self._build(prompts, chosen, rejected, clips)

    # ------------------------------------------------------------------ step
    def _summed_logps(self, logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        total = (logps * mask).sum(-1)
        return total / mask.sum(-1).clamp(min=1.0) if self.average else total

    def step(self, step: int) -> dict[str, float]:
        run, cfg = self.run_, self.config
        model = run.lm.model
        model.train()
        timer, stats = PhaseTimer(), Stats()
        metrics: dict[str, float] = {}
        rows = self.sampler.next(cfg.prompts_per_step)
        if cfg.source == "online":
            with timer("generation"):
                batch = self.rollouts.generate(rows, cfg.num_generations)
            with timer("rewards"):
                scores = score(batch, self.rewards)
            metrics.update(reward_metrics(batch, scores))
            pairs = self.pairs_from_rollouts(batch, stats)
        else:
            if self.rewards is not None and cfg.sample_every and step % cfg.sample_every == 0:
                with timer("generation"):  # monitoring only: how the policy's samples score
                    batch = self.rollouts.generate(rows, max(cfg.num_generations, 1))
                with timer("rewards"):
                    metrics.update(reward_metrics(batch, score(batch, self.rewards)))
            pairs = self.pairs_from_rows(rows, stats)
        if pairs is not None:
            self.update(pairs, stats, timer)
        metrics.update(stats.metrics())
        metrics["learning_rate"] = self.scheduler.get_last_lr()[0]
        metrics.update(timer.metrics())
        return metrics

    def update(self, pairs: PairBatch, stats: Stats, timer: PhaseTimer) -> None:
        run, cfg = self.run_, self.config
        model, forward = run.lm.model, run.forward
        n = len(pairs)
        with timer("forward_backward"):
            step_loss = 0.0
            for start in range(0, n, cfg.micro_batch_size):
                micro = pairs.select(range(start, min(start + cfg.micro_batch_size, n)))
                m = len(micro)
                seqs = micro.sequences()
                device = next(model.parameters()).device
                mask = micro.loss_mask.to(device, torch.float32)
                with timer("no_grad_forward"):
                    ref = self._summed_logps(self.reference.token_logps(forward, model, seqs), mask)
                logps, _ = forward.token_logps(model, seqs, "policy")
                policy = self._summed_logps(logps, mask)
                x = PreferenceInputs(policy[:m], policy[m:], ref[:m], ref[m:], beta=cfg.beta, label_smoothing=cfg.label_smoothing)
                losses = self.loss_fn(x)
                if cfg.nll_weight:
                    chosen_mask = mask[:m]
                    nll = -(logps[:m] * chosen_mask).sum(-1) / chosen_mask.sum(-1).clamp(min=1.0)
                    losses = losses + cfg.nll_weight * nll
                    stats.add("dpo/chosen_nll", nll.detach().cpu(), torch.ones(m))
                loss = losses.sum() / n
                run.accelerator.backward(loss)
                step_loss += float(loss.detach())
                chosen_reward = cfg.beta * (x.policy_chosen - x.ref_chosen).detach()
                rejected_reward = cfg.beta * (x.policy_rejected - x.ref_rejected).detach()
                ones = torch.ones(m)
                stats.add("dpo/chosen_reward", chosen_reward.cpu(), ones)
                stats.add("dpo/rejected_reward", rejected_reward.cpu(), ones)
                stats.add("dpo/accuracy", (chosen_reward > rejected_reward).float().cpu(), ones)
                stats.add("dpo/margin", (chosen_reward - rejected_reward).cpu(), ones)
                stats.add("dpo/chosen_logps", x.policy_chosen.detach().cpu(), ones)
        with timer("optimizer"):
            stats.record("grad_norm", run.optimizer_step(self.optimizer, self.scheduler, self.params, cfg.max_grad_norm))
            stats.record("loss", step_loss)
            run.weights_changed()
