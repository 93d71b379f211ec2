"""Policy losses (``policy_loss:``), their aggregations over tokens (``loss_aggregation:``) and value losses.

A policy loss gives a per-token loss (``[B, T]``, or ``[B, 1]`` for a sequence-level ratio) from the
policy's log-probs, the log-probs the samples were drawn under (the old policy) and the advantages.
An aggregation reduces it to the scalar one micro-batch contributes to an optimizer step, so that
summing the micro-batches of a step gives the loss of the whole step. The formulas follow TRL's
GRPO loss (``tests/test_rl_core_parity.py`` pins the equality): TRL's ``loss_type`` names map to
aggregations as ``dapo -> token_mean``, ``grpo -> seq_mean_token_mean``,
``dr_grpo -> seq_mean_token_sum_norm``, ``bnpo -> microbatch_token_mean``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from audiorl.rl.algos.registries import LOSS_AGGREGATIONS, POLICY_LOSSES, VALUE_LOSSES


@dataclass
class PolicyLossInputs:
    logps: torch.Tensor  # [B, T] policy log-probs of the sampled tokens (with grad)
    old_logps: torch.Tensor  # [B, T] log-probs under the policy that sampled them (no grad)
    advantages: torch.Tensor  # [B] or [B, T]
    mask: torch.Tensor  # [B, T] 1 for tokens in the loss
    epsilon_low: float = 0.2
    epsilon_high: float = 0.2  # clip-higher (DAPO): a larger upper bound keeps low-probability tokens exploring


@dataclass
class PolicyLossOutput:
    per_token: torch.Tensor  # [B, T] or [B, 1]
    ratio: torch.Tensor  # the importance ratio the loss clipped (same shape as per_token)
    clipped_low: torch.Tensor  # bool, where the lower clip was active (ratio < 1 - eps, advantage < 0)
    clipped_high: torch.Tensor  # bool, where the upper clip was active (ratio > 1 + eps_high, advantage > 0)


def _clipped(coef: torch.Tensor, advantages: torch.Tensor, low: float, high: float) -> PolicyLossOutput:
    clipped = torch.clamp(coef, 1 - low, 1 + high)
    per_token = -torch.min(coef * advantages, clipped * advantages)
    return PolicyLossOutput(
        per_token=per_token,
        ratio=coef,
        clipped_low=(coef < 1 - low) & (advantages < 0),
        clipped_high=(coef > 1 + high) & (advantages > 0),
    )


def _advantages_2d(x: PolicyLossInputs) -> torch.Tensor:
    return x.advantages.unsqueeze(1) if x.advantages.dim() == 1 else x.advantages


@POLICY_LOSSES.register("ppo_clip")
def ppo_clip(x: PolicyLossInputs) -> PolicyLossOutput:
    """PPO's clipped surrogate with a per-token ratio ``pi / pi_old`` (GRPO, DAPO, PPO).

    >>> out = ppo_clip(PolicyLossInputs(torch.log(torch.tensor([[1.5, 0.5]])), torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2)))
    >>> [round(v, 3) for v in out.per_token[0].tolist()], out.clipped_high.tolist()
    ([-1.2, -0.5], [[True, False]])
    """
    return _clipped(torch.exp(x.logps - x.old_logps), _advantages_2d(x), x.epsilon_low, x.epsilon_high)


@POLICY_LOSSES.register("gspo")
def gspo(x: PolicyLossInputs) -> PolicyLossOutput:
    """GSPO (Zheng et al. 2025): one ratio per sequence, ``exp(mean_t log(pi / pi_old))``, clipped.

    Use it with a small epsilon (the paper: 3e-4 low, 4e-4 high). As TRL's
    ``importance_sampling_level="sequence"``: the per-token loss is ``[B, 1]``.
    """
    mask = x.mask.to(x.logps.dtype)
    log_ratio = ((x.logps - x.old_logps) * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return _clipped(torch.exp(log_ratio).unsqueeze(-1), _advantages_2d(x), x.epsilon_low, x.epsilon_high)


# -------------------------------------------------------------- aggregations
@dataclass
class AggregationContext:
    """How one micro-batch sits in its optimizer step."""

    micro_batches: int = 1  # micro-batches accumulated into the step
    step_tokens: float = 1.0  # tokens in the loss over the whole step (all micro-batches)
    max_completion_length: int = 1  # rollout.max_new_tokens (Dr. GRPO's constant normaliser)


def _masked(per_token: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return per_token * mask


@LOSS_AGGREGATIONS.register("token_mean")
def token_mean(per_token: torch.Tensor, mask: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Every token of the step weighs the same (DAPO; TRL's ``dapo``, its default)."""
    return _masked(per_token, mask).sum() / max(ctx.step_tokens, 1.0)


@LOSS_AGGREGATIONS.register("seq_mean_token_mean")
def seq_mean_token_mean(per_token: torch.Tensor, mask: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Mean over sequences of each sequence's token mean (the GRPO paper; TRL's ``grpo``)."""
    per_seq = _masked(per_token, mask).sum(-1) / mask.sum(-1).clamp(min=1.0)
    return per_seq.mean() / ctx.micro_batches


@LOSS_AGGREGATIONS.register("seq_mean_token_sum")
def seq_mean_token_sum(per_token: torch.Tensor, mask: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Mean over sequences of each sequence's token sum (a long completion weighs more)."""
    return _masked(per_token, mask).sum(-1).mean() / ctx.micro_batches


@LOSS_AGGREGATIONS.register("seq_mean_token_sum_norm")
def seq_mean_token_sum_norm(per_token: torch.Tensor, mask: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Token sum over (sequences x max completion length): Dr. GRPO's length-unbiased loss (TRL's ``dr_grpo``)."""
    return _masked(per_token, mask).sum() / (per_token.size(0) * ctx.max_completion_length) / ctx.micro_batches


@LOSS_AGGREGATIONS.register("microbatch_token_mean")
def microbatch_token_mean(per_token: torch.Tensor, mask: torch.Tensor, ctx: AggregationContext) -> torch.Tensor:
    """Token mean within each micro-batch, then the mean over micro-batches (TRL's ``bnpo``)."""
    return _masked(per_token, mask).sum() / mask.sum().clamp(min=1.0) / ctx.micro_batches


# --------------------------------------------------------------- value losses
@VALUE_LOSSES.register("clipped_mse")
def clipped_mse(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float):
    """PPO's clipped value loss: ``0.5 * max((V - R)^2, (clip(V, V_old +- clip) - R)^2)`` per token.

    Returns the per-token loss and where the clipped branch was the larger one.
    """
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss_plain = (values - returns) ** 2
    loss_clipped = (clipped - returns) ** 2
    return 0.5 * torch.max(loss_plain, loss_clipped), loss_clipped > loss_plain


@VALUE_LOSSES.register("mse")
def mse(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, clip: float):
    """``0.5 * (V - R)^2`` per token (no clipping)."""
    return 0.5 * (values - returns) ** 2, torch.zeros_like(values, dtype=torch.bool)
