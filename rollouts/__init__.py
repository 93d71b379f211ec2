"""Rollout engines: generate audio reasoning traces from the full audio LLM."""

from audiorl.rollouts.base import (
    ROLLOUT_BACKENDS,
    Completion,
    RolloutEngine,
    RolloutRequest,
    SamplingParams,
    build_rollout_engine,
)

__all__ = ["ROLLOUT_BACKENDS", "Completion", "RolloutEngine", "RolloutRequest", "SamplingParams", "build_rollout_engine"]
