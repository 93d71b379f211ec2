"""The ``vllm`` rollout backend: colocated (vLLM in the trainer's process) or server mode."""

from __future__ import annotations

from typing import Any

from audiorl.rollouts.base import RolloutEngine


def vllm_engine(lm: Any, embedder: Any, config: Any, seed: int = 0) -> RolloutEngine:
    if config.vllm.mode == "server":
        from audiorl.rollouts.remote import RemoteRolloutEngine

        return RemoteRolloutEngine(lm, embedder, config, seed)
    from audiorl.rollouts.vllm_colocated import VLLMColocatedEngine

    return VLLMColocatedEngine(lm, embedder, config, seed)
