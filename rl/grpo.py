"""GRPO for audio LLMs on TRL's ``GRPOTrainer``.

Stock TRL's multimodal path is images only: with an audio LLM it silently drops the audio from
the log-prob and loss forwards. This subclass carries the audio through every forward, at four
seams of the trainer:

* generation goes through ``rollout_func`` to an audiorl rollout engine (prompts with audio);
* ``_get_per_token_logps_and_entropies`` (the old-policy, reference and loss forwards) builds the
  input embeddings with each row's audio (``AudioEmbedder``) and refuses to run without it;
* ``_generate_and_score_completions`` / ``_compute_loss`` attach each row's clips to the batch,
  which TRL shuffles and splits with the other per-row fields;
* advantages come from audiorl's estimator registry (``grpo.advantage``), rewards from one
  ``RewardSet`` (weights, ``None`` handling, per-reward logging).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from contextlib import contextmanager
from typing import Any

import torch
from audiorl.data.audio import Clip
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.model.base import AudioLM
from audiorl.rewards import RewardSet
from audiorl.rewards.text import as_text
from audiorl.rl.algos import ADVANTAGES
from audiorl.rl.prompts import PromptEncoder, clean_messages
from audiorl.rollouts.base import RolloutEngine, SamplingParams
from transformers import TrainerCallback
from trl import GRPOConfig, GRPOTrainer

# Reward kwargs TRL adds for its own reward functions; not dataset columns.
_TRL_REWARD_KWARGS = ("trainer_state", "log_extra", "log_metric", "environments", "completion_ids")


class _InvalidateEncoderCache(TrainerCallback):
    """A trainable encoder changes at every optimizer step: drop its cached outputs."""

    def __init__(self, embedder: AudioEmbedder):
        self.embedder = embedder

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if model is not None:
            self.embedder.invalidate(model)


class AudioGRPOTrainer(GRPOTrainer):
    def __init__(
        self,
        *,
        lm: AudioLM,
        embedder: AudioEmbedder,
        prompts: PromptEncoder,
        engine: RolloutEngine,
        rewards: RewardSet,
        sampling: SamplingParams,
        advantage: str = "grpo",
        args: GRPOConfig,
        **kwargs: Any,
    ):
        self.lm = lm
        self.embedder = embedder
        self.prompt_encoder = prompts
        self.engine = engine
        self.reward_set = rewards
        self.sampling = sampling
        self.advantage_fn = ADVANTAGES.get(advantage)
        self._audio_rows: Sequence[Sequence[Clip]] | None = None
        self._last_rewards: torch.Tensor | None = None
        self._synced_step = -1  # the optimizer step whose weights the rollout engine holds
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # rollout_func is the documented generation seam
        super().__init__(
            model=lm.model,
            reward_funcs=[self._make_reward_fn()],
            args=args,
            processing_class=lm.tokenizer,  # TRL sees a text LM; the audio is ours to carry
            rollout_func=lambda prompts, trainer: trainer._rollout(prompts),
            **kwargs,
        )
        self.add_callback(_InvalidateEncoderCache(embedder))

    # ------------------------------------------------------------------ rewards
    def _make_reward_fn(self):
        reward_set = self.reward_set

        def total(prompts, completions, **kwargs):
            log_metric = kwargs.get("log_metric")
            columns = {k: v for k, v in kwargs.items() if k not in _TRL_REWARD_KWARGS}
            prompt_texts = columns.pop("prompt_text", None)
            texts = [as_text(c) for c in completions]
            scores = reward_set.score(texts, prompt_texts, columns)
            if log_metric is not None:
                for name, value in scores.means().items():
                    if value == value:  # skip NaN: the reward applied to no sample of this batch
                        log_metric(f"rewards/{name}/mean", value)
                for name, count in scores.errors.items():
                    log_metric(f"rewards/{name}/errors", float(count))
            return [None if v != v else float(v) for v in scores.total]

        return total

    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        rewards_per_func = super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        self._last_rewards = rewards_per_func[:, 0].detach().clone()  # gathered across processes
        return rewards_per_func

    # --------------------------------------------------------------- generation
    def _rollout(self, prompts: list[list[dict]]) -> dict[str, list]:
        """TRL repeats each prompt ``num_generations`` times in a row: generate them as n per unique prompt."""
        groups: list[tuple[list[dict], int]] = []
        for messages in prompts:
            if groups and groups[-1][0] == messages:
                groups[-1] = (messages, groups[-1][1] + 1)
            else:
                groups.append((messages, 1))
        requests = [self.prompt_encoder.request(m, n=n) for m, n in groups]
        self.engine.resume()
        try:
            if self._synced_step != self.state.global_step:
                self.engine.update_weights(self.model)
                self._synced_step = self.state.global_step
            results = self.engine.generate(requests, self.sampling)
        finally:
            self.engine.release()
        prompt_ids, completion_ids, logprobs = [], [], []
        for request, completions in zip(requests, results):
            for completion in completions:
                prompt_ids.append(request.prompt_ids)
                completion_ids.append(completion.token_ids)
                logprobs.append(completion.logprobs)
        return {"prompt_ids": prompt_ids, "completion_ids": completion_ids, "logprobs": logprobs}

    # ------------------------------------------------------------------ forwards
    @contextmanager
    def _audio_for_rows(self, rows: Sequence[Sequence[Clip]]):
        previous, self._audio_rows = self._audio_rows, rows
        try:
            yield
        finally:
            self._audio_rows = previous

    def _generate_and_score_completions(self, inputs):
        rows = [self.prompt_encoder.clips(clean_messages(x["prompt"]), row=x.get("_row")) for x in inputs]
        with self._audio_for_rows(rows):
            output = super()._generate_and_score_completions(inputs)
            if not self.engine.samples_from_trainer_model:
                self._check_rollout_logprobs(output)
        output["audio_clips"] = rows  # shuffled and split by TRL together with the other per-row fields
        self._replace_advantages(output, len(inputs))
        return output

    @torch.no_grad()
    def _check_rollout_logprobs(self, output: dict) -> None:
        """Rollout engine vs trainer log-probs of the sampled tokens: log the gap; optionally correct for it.

        An engine with its own weights (vLLM) samples from a slightly different distribution than the
        trainer computes (kernels, precision, a stale sync would show here too). ``rollout.tis_cap``
        turns on truncated importance sampling: each token's loss is weighted by
        ``min(p_trainer / p_rollout, tis_cap)``.
        """
        sampling = output.get("sampling_per_token_logps")
        if sampling is None:
            return
        mask = output["completion_mask"].bool()
        old = output.get("old_per_token_logps")
        if old is None:
            ids = torch.cat([output["prompt_ids"], output["completion_ids"]], dim=1)
            attention = torch.cat([output["prompt_mask"], output["completion_mask"]], dim=1)
            old, _, _ = self._get_per_token_logps_and_entropies(
                self.model, ids, attention, output["completion_ids"].size(1),
                batch_size=self.args.per_device_train_batch_size,
            )
            output["old_per_token_logps"] = old  # the loss's ratio denominator; equal to the policy's own values
        diff = (old - sampling).float()
        valid = mask & ~torch.isnan(diff)
        gap = diff.abs()[valid]
        mode = "train" if self.model.training else "eval"
        if gap.numel():
            self._metrics[mode]["rollout/logprob_diff/mean"].append(self.accelerator.gather(gap.mean()).mean().item())
            self._metrics[mode]["rollout/logprob_diff/max"].append(self.accelerator.gather(gap.max()).max().item())
        cap = getattr(self.engine.config, "tis_cap", None)
        if cap is not None:
            ratio = torch.exp(diff.masked_fill(~valid, 0.0)).clamp(max=cap)
            output["importance_sampling_ratio"] = ratio
            if gap.numel():
                self._metrics[mode]["rollout/tis_ratio/mean"].append(ratio[valid].mean().item())

    def _replace_advantages(self, output: dict, n_local: int) -> None:
        if self._last_rewards is None:
            return
        advantages = self.advantage_fn(self._last_rewards.float(), self.num_generations)
        start = self.accelerator.process_index * n_local
        output["advantages"] = advantages[start : start + n_local].to(output["advantages"].device)

    def _compute_loss(self, model, inputs):
        with self._audio_for_rows(inputs["audio_clips"]), self._importance_weights(inputs):
            return super()._compute_loss(model, inputs)

    @contextmanager
    def _importance_weights(self, inputs):
        """TRL applies ``importance_sampling_ratio`` only under its own vLLM flags: raise them for this loss."""
        if "importance_sampling_ratio" not in inputs:
            yield
            return
        saved = self.use_vllm, self.vllm_importance_sampling_correction
        self.use_vllm, self.vllm_importance_sampling_correction = True, True
        try:
            yield
        finally:
            self.use_vllm, self.vllm_importance_sampling_correction = saved

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **image_kwargs,
    ):
        rows = self._audio_rows
        if rows is None or len(rows) != input_ids.size(0):
            # Never run an audio LLM forward without its audio (stock TRL's silent failure).
            raise RuntimeError(
                f"audio-aware forward without audio: {input_ids.size(0)} rows, "
                f"{'no' if rows is None else len(rows)} audio rows"
            )
        if image_kwargs.get("pixel_values") is not None:
            raise ValueError("image inputs are not supported by the audio GRPO trainer")
        batch_size = batch_size or input_ids.size(0)
        unwrapped = self.accelerator.unwrap_model(model)
        all_logps, all_entropies = [], []
        for start in range(0, input_ids.size(0), batch_size):
            end = min(start + batch_size, input_ids.size(0))
            ids, mask = input_ids[start:end], attention_mask[start:end]
            embeds = self.embedder.inputs_embeds(unwrapped, ids, rows[start:end])
            labels = ids.masked_fill(mask == 0, -100)
            labels[:, :-logits_to_keep] = -100
            with self.accelerator.autocast():
                outputs = model(inputs_embeds=embeds, attention_mask=mask, labels=labels, fused_lm_head=True)
            all_logps.append(outputs.log_probs[:, -logits_to_keep:])
            if compute_entropy:
                all_entropies.append(outputs.entropy[:, -logits_to_keep:])
        logps = torch.cat(all_logps, dim=0)
        entropies = torch.cat(all_entropies, dim=0) if compute_entropy else None
        return logps, entropies, None
