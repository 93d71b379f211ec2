"""PPO's critic: a value head on a copy of the policy's language model.

The copy is taken at the start of a PPO stage (the previous stage's weights) and trained in full
with its own learning rate; it reads the policy's input embeddings, audio included
(``AudioForward.values``), so it needs no audio encoder of its own.
"""

from __future__ import annotations

import copy

import torch
from audiorl.model.base import AudioLM
from audiorl.model.weights import base_model
from torch import nn


class Critic(nn.Module):
    def __init__(self, backbone: nn.Module, hidden_size: int):
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(hidden_size, 1)
        # A zero head starts every value at 0: the first advantages are the (whitened) returns
        # themselves, not noise from a random head.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    @classmethod
    def from_policy(cls, lm: AudioLM, model: nn.Module) -> Critic:
        inner = base_model(model)
        backbone = copy.deepcopy(lm.language_model(inner))
        backbone.requires_grad_(True)
        hidden = inner.config.get_text_config().hidden_size
        param = next(backbone.parameters())
        critic = cls(backbone, hidden).to(param.device)
        critic.head.to(torch.float32)  # values are regressed in float32 whatever the backbone's dtype
        return critic
