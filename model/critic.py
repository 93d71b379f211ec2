"""PPO's critic: a value head on the language model, in one of two forms.

* ``copy``: a copy of the policy's language model, taken when the PPO stage starts (the previous
  stage's weights) and trained in full with its own learning rate;
* ``shared_base``: a second LoRA adapter (``critic``) on the policy's own base weights, so the
  language model is held once (the memory of a 7B critic is a few MB of adapter); the policy's
  adapter is switched off while the critic runs, and the critic's is never synced, saved or merged.

Either way the critic reads the policy's input embeddings, audio included (``AudioForward.values``),
so it needs no audio encoder of its own.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from audiorl.model.base import AudioLM
from audiorl.model.weights import base_model
from torch import nn

ADAPTER = "critic"


class Critic(nn.Module):
    def __init__(self, backbone: nn.Module | None, hidden_size: int):
        super().__init__()
        self.backbone = backbone  # None when shared: the policy's backbone, not a submodule of the critic
        self.head = nn.Linear(hidden_size, 1)
        # A zero head starts every value at 0: the first advantages are the (whitened) returns
        # themselves, not noise from a random head.
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        self._policy: nn.Module | None = None  # shared_base: the PEFT policy that carries the critic adapter
        self._shared_backbone: nn.Module | None = None

    @classmethod
    def copy_of(cls, lm: AudioLM, model: nn.Module) -> Critic:
        """A copy of ``model``'s language model (take it before the policy's adapter exists)."""
        inner = base_model(model)
        backbone = copy.deepcopy(lm.language_model(inner))
        backbone.requires_grad_(True)
        critic = cls(backbone, inner.config.get_text_config().hidden_size)
        return critic.to(next(backbone.parameters()).device)

    @classmethod
    def shared_base(cls, lm: AudioLM, policy: nn.Module, lora_config) -> Critic:
        """A second LoRA adapter on the PEFT ``policy``'s base (``lora_config``: a peft LoraConfig)."""
        policy.add_adapter(ADAPTER, lora_config)  # added inactive: the policy's optimizer never sees it
        critic = cls(None, base_model(policy).config.get_text_config().hidden_size)
        critic._policy = policy
        critic._shared_backbone = lm.language_model(policy)
        return critic.to(next(policy.parameters()).device)

    @property
    def shared(self) -> bool:
        return self._policy is not None

    @contextmanager
    def active(self) -> Iterator[None]:
        """Run (and backpropagate) the critic inside this: a shared critic's adapter replaces the policy's."""
        if not self.shared:
            yield
            return
        previous = self._policy.active_adapter
        self._policy.set_adapter(ADAPTER)
        try:
            yield
        finally:
            self._policy.set_adapter(previous)

    def hidden_states(self, inputs: dict) -> torch.Tensor:
        backbone = self._shared_backbone if self.shared else self.backbone
        with self.active():
            return backbone(**inputs, use_cache=False).last_hidden_state

    def trainable_parameters(self) -> list[nn.Parameter]:
        if not self.shared:
            return list(self.parameters())
        adapter = [p for n, p in self._policy.named_parameters() if f".{ADAPTER}." in n]
        return list(self.head.parameters()) + adapter

    def close(self) -> None:
        """A shared critic leaves the policy as it found it (nothing of it is merged or saved)."""
        if self.shared and ADAPTER in self._policy.peft_config:
            self._policy.delete_adapter(ADAPTER)
            self._policy = None
