"""Rewards: a registry (``@reward``), the built-ins and the aggregator that weights them.

Write your own as ``fn(completions, **columns) -> list[float | None]`` and name it in a recipe by
``module:function``, ``path/to/file.py:function`` or an ``audiorl.rewards`` entry point, or
register it with ``@audiorl.rewards.reward("name")``.
"""

from audiorl.rewards import asr, audio_output, builtin, judge, paralinguistic, preference  # noqa: F401  (register the built-ins)
from audiorl.rewards.aggregate import RewardScores, RewardSet
from audiorl.rewards.registry import REWARDS, plugin_rewards, resolve_reward, reward

__all__ = ["REWARDS", "RewardScores", "RewardSet", "plugin_rewards", "resolve_reward", "reward"]
