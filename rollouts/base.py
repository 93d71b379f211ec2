"""The rollout-engine contract: n completions per prompt with audio -> token ids, text, log-probs.

``rl/`` only talks to this interface and picks a backend by name from ``ROLLOUT_BACKENDS``;
backends are registered as dotted strings so that heavy ones (vLLM) are imported only when chosen.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from audiorl.common.registry import Registry
from audiorl.data.audio import Clip
from torch import nn

ROLLOUT_BACKENDS: Registry[type["RolloutEngine"]] = Registry("rollout backend")
ROLLOUT_BACKENDS.register("hf", "audiorl.rollouts.hf:HFRolloutEngine")
ROLLOUT_BACKENDS.register("vllm", "audiorl.rollouts.vllm_engine:vllm_engine")


@dataclass(frozen=True)
class RolloutRequest:
    """One prompt: its token ids (audio placeholders already expanded) and its clips, in placeholder order."""

    prompt_ids: list[int]
    clips: list[Clip] = field(default_factory=list)
    n: int = 1


@dataclass(frozen=True)
class SamplingParams:
    max_new_tokens: int = 64
    temperature: float = 1.0  # 0 means greedy
    top_p: float = 1.0
    top_k: int = 0  # 0: no top-k

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0


@dataclass
class Completion:
    token_ids: list[int]  # includes the stop token when one was produced
    text: str  # decoded without special tokens
    logprobs: list[float]  # log-prob of each sampled token under the sampling distribution
    finished: bool  # ended with a stop token (False: cut at max_new_tokens)


class RolloutEngine(abc.ABC):
    """Generates completions from the current policy.

    Constructed as ``Engine(lm, embedder, config, seed)`` with the recipe's ``rollout`` section.
    Around each generation the trainer calls ``resume``, then ``update_weights`` if the policy
    changed since the last generation (optimizer steps, SFT), then ``generate``, then ``release``.
    """

    #: True when the engine samples from the trainer's own module (nothing to sync, log-probs exact);
    #: False for engines with their own copy of the weights, whose log-probs the trainer checks.
    samples_from_trainer_model = True

    def __init__(self, lm: Any, embedder: Any, config: Any = None, seed: int = 0):
        self.lm = lm
        self.embedder = embedder
        self.config = config
        self.seed = seed

    @abc.abstractmethod
    def generate(self, requests: Sequence[RolloutRequest], params: SamplingParams) -> list[list[Completion]]:
        """``request.n`` completions for every request, in order."""

    def update_weights(self, model: nn.Module) -> None:
        """Sample from ``model``'s current weights from now on (a LoRA policy: its merged weights)."""

    def release(self) -> None:
        """Free memory while the trainer steps (e.g. vLLM sleep mode)."""

    def resume(self) -> None:
        """Undo ``release`` before the next generation."""

    def close(self) -> None:
        """Free what the engine holds (processes, temporary files)."""


def resolve_backend(backend: str) -> str:
    """``auto``: vLLM on a GPU machine where it is installed, transformers otherwise."""
    if backend != "auto":
        return backend
    import importlib.util

    import torch

    return "vllm" if torch.cuda.is_available() and importlib.util.find_spec("vllm") else "hf"


def build_rollout_engine(backend: str, lm: Any, embedder: Any, config: Any = None, seed: int = 0) -> RolloutEngine:
    return ROLLOUT_BACKENDS.get(resolve_backend(backend))(lm, embedder, config, seed)
