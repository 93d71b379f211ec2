"""KL estimators (``kl_estimator:``): per-token estimates of KL(pi || pi_ref) from sampled tokens (Schulman's k1-k3).

Used in the loss (GRPO: ``beta * k3`` added to every token's loss) or in the reward (classic RLHF
PPO: ``-beta * k1`` added to every token's reward, the score on the last token).
"""

from __future__ import annotations

import torch
from audiorl.rl.algos.registries import KL_ESTIMATORS


@KL_ESTIMATORS.register("k1")
def k1(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """``log pi - log pi_ref``: unbiased, high variance, can be negative (the RLHF reward penalty)."""
    return logps - ref_logps


@KL_ESTIMATORS.register("k2")
def k2(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """``0.5 * (log pi - log pi_ref)^2``: biased, low variance, non-negative."""
    return 0.5 * (logps - ref_logps) ** 2


@KL_ESTIMATORS.register("k3")
def k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """``exp(r) - r - 1`` with ``r = log pi_ref - log pi``: unbiased, non-negative (GRPO; TRL's KL term).

    >>> k3(torch.tensor([0.0]), torch.tensor([0.0])).item()
    0.0
    """
    delta = ref_logps - logps
    return torch.exp(delta) - delta - 1
