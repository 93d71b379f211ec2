"""The RL algorithms' parts, each chosen by name in a recipe stage: one core, registries of parts.

| registry | recipe key | contract | entries |
|---|---|---|---|
| ``ADVANTAGES`` | ``advantage`` | ``fn(AdvantageInputs) -> [N] or [N, T]`` | grpo, dr_grpo, rloo, gae |
| ``POLICY_LOSSES`` | ``policy_loss`` | ``fn(PolicyLossInputs) -> PolicyLossOutput`` | ppo_clip, gspo |
| ``LOSS_AGGREGATIONS`` | ``loss_aggregation`` | ``fn(per_token [B, T], mask, AggregationContext) -> scalar`` | token_mean, seq_mean_token_mean, seq_mean_token_sum, seq_mean_token_sum_norm, microbatch_token_mean |
| ``VALUE_LOSSES`` | ``critic.value_loss`` | ``fn(values, old_values, returns, clip) -> ([B, T], clipped)`` | clipped_mse, mse |
| ``PREFERENCE_LOSSES`` | ``loss`` (dpo) | ``fn(PreferenceInputs) -> [B]`` | dpo_sigmoid, ipo |
| ``KL_ESTIMATORS`` | ``kl_estimator`` | ``fn(logps, ref_logps) -> [B, T]`` | k1, k2, k3 |

A user's own part is a ``package.module:function`` with the same contract, named in the recipe
like a built-in. Names are unique across the registries (a test checks it), so a name says what
it is: ``grpo`` is only the advantage estimator; TRL's ``loss_type: grpo`` aggregation is
``seq_mean_token_mean`` here.
"""

from __future__ import annotations

from audiorl.rl.algos.registries import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    REGISTRIES,
    TRL_LOSS_TYPES,
    VALUE_LOSSES,
)
from audiorl.rl.algos import advantages as _advantages  # noqa: F401  (registers the entries)
from audiorl.rl.algos import kl as _kl  # noqa: F401
from audiorl.rl.algos import policy_losses as _policy_losses  # noqa: F401
from audiorl.rl.algos import preference as _preference  # noqa: F401
from audiorl.rl.algos.advantages import AdvantageInputs
from audiorl.rl.algos.policy_losses import AggregationContext, PolicyLossInputs, PolicyLossOutput
from audiorl.rl.algos.preference import PreferenceInputs

__all__ = [
    "ADVANTAGES",
    "KL_ESTIMATORS",
    "LOSS_AGGREGATIONS",
    "POLICY_LOSSES",
    "PREFERENCE_LOSSES",
    "REGISTRIES",
    "TRL_LOSS_TYPES",
    "VALUE_LOSSES",
    "AdvantageInputs",
    "AggregationContext",
    "PolicyLossInputs",
    "PolicyLossOutput",
    "PreferenceInputs",
]
