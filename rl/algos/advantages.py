"""Advantage estimators (``advantage:`` in a stage).

Group estimators (grpo, dr_grpo, rloo) map the rewards of ``n_groups x group_size`` completions
(grouped consecutively, NaN for "no reward applied") to one advantage per completion; NaN rewards
get advantage 0. ``gae`` returns one advantage per completion token from a critic's values.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from audiorl.rl.algos.registries import ADVANTAGES

EPS = 1e-4


@dataclass
class AdvantageInputs:
    """What an estimator may use. Group estimators read ``rewards`` and ``group_size``; ``gae`` the token fields."""

    rewards: torch.Tensor  # [N] total reward per completion, NaN where no reward applied
    group_size: int = 1
    mask: torch.Tensor | None = None  # [N, T] completion tokens that count
    token_rewards: torch.Tensor | None = None  # [N, T] per-token rewards (score on the last token, KL shaping)
    values: torch.Tensor | None = None  # [N, T] critic values of the state before each token
    gamma: float = 1.0
    lam: float = 1.0


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _group_mean(groups: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(groups, dim=1, keepdim=True)


@ADVANTAGES.register("grpo")
def grpo(x: AdvantageInputs) -> torch.Tensor:
    """(r - group mean) / (group std + eps), the GRPO paper's estimator.

    >>> [round(a, 3) for a in grpo(AdvantageInputs(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2)).tolist()]
    [0.707, -0.707, 0.0, 0.0]
    """
    groups = _grouped(x.rewards, x.group_size)
    centred = groups - _group_mean(groups)
    valid = (~torch.isnan(groups)).sum(dim=1, keepdim=True).clamp(min=2)
    std = torch.sqrt(torch.nansum(centred**2, dim=1, keepdim=True) / (valid - 1))
    return torch.nan_to_num(centred / (std + EPS), nan=0.0).view(-1)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(x: AdvantageInputs) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no division by the group std).

    >>> dr_grpo(AdvantageInputs(torch.tensor([1.0, 0.0, 0.5, 0.5]), 2)).tolist()
    [0.5, -0.5, 0.0, 0.0]
    """
    groups = _grouped(x.rewards, x.group_size)
    return torch.nan_to_num(groups - _group_mean(groups), nan=0.0).view(-1)


@ADVANTAGES.register("rloo")
def rloo(x: AdvantageInputs) -> torch.Tensor:
    """r - mean of the *other* completions of the group (REINFORCE leave-one-out).

    >>> rloo(AdvantageInputs(torch.tensor([1.0, 0.0, 0.0]), 3)).tolist()
    [1.0, -0.5, -0.5]
    """
    groups = _grouped(x.rewards, x.group_size)
    valid = ~torch.isnan(groups)
    filled = torch.where(valid, groups, torch.zeros_like(groups))
    count = valid.sum(dim=1, keepdim=True)
    others = (filled.sum(dim=1, keepdim=True) - filled) / (count - valid.long()).clamp(min=1)
    return torch.where(valid & (count > 1), groups - others, torch.zeros_like(groups)).view(-1)


@ADVANTAGES.register("gae")
def gae(x: AdvantageInputs) -> torch.Tensor:
    """Generalised advantage estimation (Schulman et al. 2016), one advantage per completion token.

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` with ``V`` zero after a completion's last token, and
    ``A_t = delta_t + gamma * lam * A_{t+1}``. Tokens outside ``mask`` get 0 and break the recursion.

    >>> v = torch.tensor([[0.5, 0.5, 0.0]]); r = torch.tensor([[0.0, 1.0, 0.0]]); m = torch.tensor([[1, 1, 0]])
    >>> gae(AdvantageInputs(torch.ones(1), mask=m, token_rewards=r, values=v, gamma=1.0, lam=1.0)).tolist()
    [[0.5, 0.5, 0.0]]
    """
    if x.token_rewards is None or x.values is None or x.mask is None:
        raise ValueError("the 'gae' advantage needs per-token rewards, a critic's values and the mask (algorithm: ppo)")
    mask = x.mask.to(x.values.dtype)
    values = x.values * mask
    rewards = x.token_rewards * mask
    advantages = torch.zeros_like(values)
    last = torch.zeros_like(values[:, 0])
    for t in reversed(range(values.size(1))):
        next_value = values[:, t + 1] if t + 1 < values.size(1) else torch.zeros_like(last)
        delta = rewards[:, t] + x.gamma * next_value - values[:, t]
        last = (delta + x.gamma * x.lam * last) * mask[:, t]
        advantages[:, t] = last
    return advantages
