"""Which weights a rollout engine needs after the policy changed.

The first sync of a model object sends everything (vLLM started from a checkpoint the trainer may
have changed since, e.g. by merging an SFT adapter); later syncs of the same object send only the
weights an optimizer step can change (LoRA-merged layers, trained modules): the frozen audio
encoder and embeddings cross once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class WeightSync:
    def __init__(self, lm: Any):
        self.lm = lm
        self._model_id: int | None = None
        self.syncs = 0
        self.last_tensors = 0
        self.last_bytes = 0

    def changed(self, model: nn.Module) -> dict[str, torch.Tensor]:
        full = id(model) != self._model_id
        state = self.lm.engine_state_dict(model, trainable_only=not full)
        self._model_id = id(model)
        self.syncs += 1
        self.last_tensors = len(state)
        self.last_bytes = sum(t.numel() * t.element_size() for t in state.values())
        return state
