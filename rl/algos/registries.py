"""The registries themselves (their entries live in the sibling modules)."""

from __future__ import annotations

from audiorl.common.registry import Registry

ADVANTAGES: Registry = Registry("advantage estimator", allow_imports=True)
POLICY_LOSSES: Registry = Registry("policy loss", allow_imports=True)
LOSS_AGGREGATIONS: Registry = Registry("loss aggregation", allow_imports=True)
VALUE_LOSSES: Registry = Registry("value loss", allow_imports=True)
PREFERENCE_LOSSES: Registry = Registry("preference loss", allow_imports=True)
KL_ESTIMATORS: Registry = Registry("KL estimator", allow_imports=True)

#: recipe key -> registry, for validation and `audiorl` listings
REGISTRIES: dict[str, Registry] = {
    "advantage": ADVANTAGES,
    "policy_loss": POLICY_LOSSES,
    "loss_aggregation": LOSS_AGGREGATIONS,
    "critic.value_loss": VALUE_LOSSES,
    "loss": PREFERENCE_LOSSES,
    "kl_estimator": KL_ESTIMATORS,
}

#: TRL's GRPO ``loss_type`` names -> the aggregation that computes the same loss (for error messages)
TRL_LOSS_TYPES = {
    "dapo": "token_mean",
    "grpo": "seq_mean_token_mean",
    "dr_grpo": "seq_mean_token_sum_norm",
    "bnpo": "microbatch_token_mean",
}
