"""Advantage estimators, chosen by name (``grpo.advantage``): one RL core, a registry of algorithms.

Each maps the rewards of ``n_groups x group_size`` completions (grouped consecutively, NaN for
"no reward applied") to one advantage per completion; NaN rewards get advantage 0.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from audiorl.common.registry import Registry

AdvantageFn = Callable[[torch.Tensor, int], torch.Tensor]
ADVANTAGES: Registry[AdvantageFn] = Registry("advantage estimator")

EPS = 1e-4


def _grouped(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size}")
    return rewards.view(-1, group_size)


def _group_mean(groups: torch.Tensor) -> torch.Tensor:
    return torch.nanmean(groups, dim=1, keepdim=True)


@ADVANTAGES.register("grpo")
def grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """(r - group mean) / (group std + eps), the GRPO paper's estimator.

    >>> [round(a, 3) for a in grpo(torch.tensor([1.0, 0.0, 1.0, 1.0]), 2).tolist()]
    [0.707, -0.707, 0.0, 0.0]
    """
    groups = _grouped(rewards, group_size)
    centred = groups - _group_mean(groups)
    valid = (~torch.isnan(groups)).sum(dim=1, keepdim=True).clamp(min=2)
    std = torch.sqrt(torch.nansum(centred**2, dim=1, keepdim=True) / (valid - 1))
    return torch.nan_to_num(centred / (std + EPS), nan=0.0).view(-1)


@ADVANTAGES.register("dr_grpo")
def dr_grpo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no division by the group std)."""
    groups = _grouped(rewards, group_size)
    return torch.nan_to_num(groups - _group_mean(groups), nan=0.0).view(-1)


@ADVANTAGES.register("rloo")
def rloo(rewards: torch.Tensor, group_size: int) -> torch.Tensor:
    """r - mean of the *other* completions of the group (REINFORCE leave-one-out)."""
    groups = _grouped(rewards, group_size)
    valid = ~torch.isnan(groups)
    filled = torch.where(valid, groups, torch.zeros_like(groups))
    count = valid.sum(dim=1, keepdim=True)
    others = (filled.sum(dim=1, keepdim=True) - filled) / (count - valid.long()).clamp(min=1)
    return torch.where(valid & (count > 1), groups - others, torch.zeros_like(groups)).view(-1)
