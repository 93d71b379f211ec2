"""Rewards: a registry (``@reward``), the built-ins and the aggregator that weights them.

Write your own as ``fn(completions, **columns) -> list[float | None]`` and name it in a recipe by
``module:function`` or register it with ``@audiorl.rewards.reward("name")``.
"""

from audiorl.rewards import builtin  # noqa: F401  (registers the built-ins)
from audiorl.rewards.aggregate import RewardScores, RewardSet
from audiorl.rewards.registry import REWARDS, resolve_reward, reward

__all__ = ["REWARDS", "RewardScores", "RewardSet", "resolve_reward", "reward"]
