"""The reference policy of a stage (KL terms, DPO): the weights the stage started from, frozen.

With LoRA the reference is the policy with its adapters disabled (no copy: the stage's fresh
adapter starts as the identity, so disabling it gives the starting weights, modules_to_save
included). Without LoRA it is a frozen copy taken when the stage starts. Its forwards run as the
``reference`` role, so a trainable encoder's cached outputs are never mixed with the policy's.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from audiorl.model.forward import AudioForward, Sequences
from audiorl.model.weights import base_model
from torch import nn


class Reference:
    def __init__(self, policy: nn.Module, kind: str = "auto"):
        from peft import PeftModel

        if kind == "auto":
            kind = "adapter_disabled" if isinstance(policy, PeftModel) else "frozen_copy"
        if kind == "adapter_disabled" and not isinstance(policy, PeftModel):
            raise ValueError("an adapter-disabled reference needs a LoRA policy")
        self.kind = kind
        self.copy: nn.Module | None = None
        if kind == "frozen_copy":
            self.copy = copy.deepcopy(base_model(policy)).requires_grad_(False)

    @contextmanager
    def model(self, policy: nn.Module) -> Iterator[nn.Module]:
        if self.copy is not None:
            yield self.copy
        else:
            with policy.disable_adapter():
                yield policy

    @torch.no_grad()
    def token_logps(self, forward: AudioForward, policy: nn.Module, seqs: Sequences, temperature: float = 1.0) -> torch.Tensor:
        with self.model(policy) as model:
            return forward.token_logps(model, seqs, "reference", temperature)[0]
