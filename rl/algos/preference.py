"""Preference losses (``loss:`` in a dpo stage): chosen vs rejected completions against a reference.

Inputs are per-pair log-probabilities (summed over the completion's loss tokens, or averaged
where the loss says ``average_logps``) of the policy and the reference.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from audiorl.rl.algos.registries import PREFERENCE_LOSSES


@dataclass
class PreferenceInputs:
    policy_chosen: torch.Tensor  # [B]
    policy_rejected: torch.Tensor  # [B]
    ref_chosen: torch.Tensor  # [B]
    ref_rejected: torch.Tensor  # [B]
    beta: float = 0.1
    label_smoothing: float = 0.0  # conservative DPO: the share of pairs assumed mislabelled

    @property
    def logits(self) -> torch.Tensor:
        """(policy - reference) log-ratio of chosen minus that of rejected."""
        return (self.policy_chosen - self.ref_chosen) - (self.policy_rejected - self.ref_rejected)


@PREFERENCE_LOSSES.register("dpo_sigmoid")
def dpo_sigmoid(x: PreferenceInputs) -> torch.Tensor:
    """DPO (Rafailov et al. 2023): ``-log sigmoid(beta * logits)``, with optional label smoothing (cDPO).

    >>> z = torch.zeros(1)
    >>> round(dpo_sigmoid(PreferenceInputs(z, z, z, z)).item(), 4)  # log 2 at the start
    0.6931
    """
    scaled = x.beta * x.logits
    return -F.logsigmoid(scaled) * (1 - x.label_smoothing) - F.logsigmoid(-scaled) * x.label_smoothing


def ipo(x: PreferenceInputs) -> torch.Tensor:
    """IPO (Azar et al. 2023): ``(logits - 1 / (2 * beta))^2`` on per-token average log-probs."""
    return (x.logits - 1 / (2 * x.beta)) ** 2


ipo.average_logps = True  # type: ignore[attr-defined]
PREFERENCE_LOSSES.register("ipo", ipo)
