"""The stages a recipe lists (``stages:``), one typed config per algorithm, each checked before anything loads.

A recipe is a list of stages; each starts from the previous stage's weights (a LoRA stage's
adapter is merged before the next begins). ``algorithm`` picks the config class and the runner
from ``ALGORITHMS``; the runner is imported only when the stage runs.

    stages:
      - {algorithm: sft, epochs: 2}
      - {algorithm: ppo, name: ppo_think, max_steps: 60, rewards: [{name: think_length}]}
      - {algorithm: grpo, max_steps: 400}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import Any

from audiorl.common.errors import ConfigError, missing_input, nearest
from audiorl.common.registry import Registry
from omegaconf import MISSING


@dataclass
class RewardSpec:
    # a registered name (`audiorl rewards` lists them), an entry point of the `audiorl.rewards` group,
    # path/to/file.py:function (relative to the working directory or the recipe) or module:function
    name: str = MISSING
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    alias: str | None = None  # name used in logs (default: the function's name)
    on_error: str = "raise"  # raise | zero | skip: what a sample the reward fails on gets
    timeout_s: float | None = None  # per call; a call that overruns counts as failing
    workers: int = 0  # >0: run in that many worker processes (CPU-heavy rewards)
    batch_size: int | None = None  # samples per call (default: the whole batch, or split across workers)


@dataclass
class StageConfig:
    algorithm: str = MISSING  # sft | grpo | ppo | dpo
    name: str | None = None  # in logs, overrides (stages.<name>.key=value) and output folders; default: the algorithm
    enabled: bool = True  # false: skip this stage (its weights are the previous stage's)
    rewards: list[RewardSpec] | None = None  # this stage's rewards (default: the recipe's `rewards`)


@dataclass
class OptimizerFields:
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"  # constant | linear | cosine | constant_with_warmup
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0  # 0: no clipping
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999


@dataclass
class SFTConfig(StageConfig):
    algorithm: str = "sft"
    completion_template: str = "{completion}"  # formatted with the row's columns
    shuffle_labels: bool = False  # shuffle `label` across rows, afresh each epoch: learn the answer format, not the audio
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_samples: int | None = None
    logging_steps: int = 5


@dataclass
class PolicyGradientConfig(OptimizerFields, StageConfig):
    max_steps: int = 100  # iterations: each generates a batch and updates the policy on it
    prompts_per_step: int = 8  # unique prompts per iteration
    num_generations: int = 8  # completions per prompt (the group)
    micro_batch_size: int = 32  # completions per forward/backward
    epochs: int = 1  # passes over each generated batch (PPO epochs; TRL's num_iterations)
    minibatches: int = 1  # optimizer steps per pass: the batch is split into this many shuffled minibatches
    advantage: str = "grpo"  # grpo | dr_grpo | rloo | gae | package.module:function
    policy_loss: str = "ppo_clip"  # ppo_clip (token ratio) | gspo (sequence ratio) | package.module:function
    # how per-token losses are averaged: token_mean (DAPO; TRL's dapo) | seq_mean_token_mean (GRPO paper; TRL's grpo)
    # | seq_mean_token_sum | seq_mean_token_sum_norm (Dr. GRPO; TRL's dr_grpo) | microbatch_token_mean (TRL's bnpo)
    loss_aggregation: str = "token_mean"
    epsilon: float = 0.2  # clip range of the ratio (lower side)
    epsilon_high: float | None = None  # upper side (clip-higher, DAPO: 0.28); default: epsilon
    beta: float = 0.0  # KL coefficient to the reference (the stage's starting weights); 0: no reference forward
    kl_estimator: str = "k3"  # k1 | k2 | k3 | package.module:function
    kl_in: str = "loss"  # loss: beta * KL added to each token's loss | reward: -beta * KL added to each token's reward
    # kl_in loss: weight the KL term by the (differentiable) importance ratio, which makes its gradient the
    # unbiased reverse-KL gradient (DeepSeek-V3.2; TRL's use_bias_correction_kl, on by default there too)
    kl_bias_correction: bool = True
    tis_cap: float | None = None  # truncated importance sampling min(p_trainer / p_rollout, cap) per token; null: off
    whiten_rewards: bool = False  # normalise the batch's scores to mean 0, std 1 before advantages
    whiten_advantages: bool = False  # normalise the advantages over the batch's tokens
    gamma: float = 1.0  # gae: discount
    lam: float = 1.0  # gae: lambda
    # token roles in the loss: text | think | audio (a speech reply's codes); e.g. [text, think] keeps speech codes out
    loss_on: list[str] = field(default_factory=lambda: ["text", "think", "audio"])
    logging_steps: int = 1


@dataclass
class GRPOConfig(PolicyGradientConfig):
    algorithm: str = "grpo"


@dataclass
class CriticConfig(OptimizerFields):
    # copy: a value head on a full copy of the language model | shared_base: a value head on a second LoRA adapter
    # on the policy's own base weights (lora.enabled; the language model is held once)
    model: str = "copy"
    learning_rate: float = 1e-5
    value_loss: str = "clipped_mse"  # clipped_mse | mse | package.module:function
    value_clip: float = 0.2  # clipped_mse: how far a value may move from the rollout's value per update
    warmup_steps: int = 0  # iterations at the start that train only the critic (the policy waits for sensible values)


@dataclass
class PPOConfig(PolicyGradientConfig):
    algorithm: str = "ppo"
    advantage: str = "gae"
    kl_estimator: str = "k1"  # classic RLHF: the KL penalty is a per-token reward
    kl_in: str = "reward"
    beta: float = 0.05
    whiten_advantages: bool = True
    prompts_per_step: int = 64  # Step-Audio 2's global batch
    num_generations: int = 1  # PPO needs no group; more completions per prompt still help the batch
    gamma: float = 1.0
    lam: float = 0.95
    epochs: int = 2
    minibatches: int = 2
    critic: CriticConfig = field(default_factory=CriticConfig)


@dataclass
class DPOConfig(OptimizerFields, StageConfig):
    algorithm: str = "dpo"
    # online: pairs from the engine's rollouts, best vs worst of a group by the rewards (iterative DPO);
    # offline: pairs from `pairs`, a data file with prompt + audio + chosen + rejected columns
    source: str = "online"
    pairs: str | None = None  # offline: .jsonl/.json/.parquet/.csv; audio paths relative to the file
    chosen_column: str = "chosen"
    rejected_column: str = "rejected"
    max_steps: int = 100  # optimizer steps
    prompts_per_step: int = 8  # online: prompts per step (each gives at most one pair); offline: pairs per step
    num_generations: int = 4  # online: completions per prompt, ranked by the rewards
    min_margin: float = 0.0  # online: a group whose best and worst rewards differ by no more than this gives no pair
    micro_batch_size: int = 8  # pairs per forward/backward
    learning_rate: float = 1e-5
    beta: float = 0.1  # strength of the pull towards the reference
    loss: str = "dpo_sigmoid"  # dpo_sigmoid | ipo | package.module:function
    label_smoothing: float = 0.0  # dpo_sigmoid: share of pairs assumed mislabelled (conservative DPO)
    # RPO (Pang et al. 2024; TRL's rpo_alpha): add this times the chosen completion's mean token NLL, which keeps
    # DPO from pushing the chosen answers' likelihood down with the rejected ones'
    nll_weight: float = 0.0
    reference: str = "auto"  # auto (LoRA: adapters disabled; else a frozen copy) | adapter_disabled | frozen_copy
    loss_on: list[str] = field(default_factory=lambda: ["text", "think", "audio"])  # token roles in the loss
    sample_every: int = 1  # offline: every N steps, sample the step's prompts and log their reward (0: never)
    logging_steps: int = 1


@dataclass(frozen=True)
class Algorithm:
    config: type
    runner: str  # "module:Class" of the stage runner, imported when the stage runs
    validate: Callable[[Any, Any, str], None]


ALGORITHMS: Registry[Algorithm] = Registry("algorithm")


# ------------------------------------------------------------------ validation
def _positive(stage: Any, key: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(stage, name)
        if value is None or value <= 0:
            raise ConfigError(f"'{key}.{name}' must be positive, got {value}")


def _non_negative(stage: Any, key: str, names: tuple[str, ...]) -> None:
    for name in names:
        value = getattr(stage, name)
        if value < 0:
            raise ConfigError(f"'{key}.{name}' must be >= 0, got {value}")


def _choice(value: str, choices: tuple[str, ...], key: str) -> None:
    if value not in choices:
        raise ConfigError(f"'{key}' is '{value}'{nearest(str(value), choices)}; choose one of: {', '.join(choices)}")


SCHEDULERS = ("constant", "linear", "cosine", "constant_with_warmup")


def _check_optimizer(opt: OptimizerFields, key: str) -> None:
    _positive(opt, key, ("learning_rate",))
    _non_negative(opt, key, ("warmup_steps", "weight_decay", "max_grad_norm"))
    _choice(opt.lr_scheduler, SCHEDULERS, f"{key}.lr_scheduler")
    for name in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(opt, name) < 1:
            raise ConfigError(f"'{key}.{name}' must be in [0, 1), got {getattr(opt, name)}")


def validate_sft(stage: SFTConfig, recipe: Any, key: str) -> None:
    _positive(stage, key, ("epochs", "learning_rate", "batch_size", "logging_steps"))
    if stage.max_samples is not None and stage.max_samples <= 0:
        raise ConfigError(f"'{key}.max_samples' must be positive or null, got {stage.max_samples}")
    if not stage.completion_template:
        raise ConfigError(f"'{key}.completion_template' is empty")


def _check_registry_names(stage: Any, key: str, names: dict[str, str]) -> None:
    from audiorl.rl.algos import REGISTRIES, TRL_LOSS_TYPES

    for field_name, registry_key in names.items():
        value = attrgetter(field_name)(stage)
        if registry_key == "loss_aggregation" and value in TRL_LOSS_TYPES:
            raise ConfigError(
                f"'{key}.{field_name}' is '{value}', TRL's loss_type name: here that aggregation is "
                f"'{TRL_LOSS_TYPES[value]}' (names say what they do: {', '.join(REGISTRIES[registry_key].names())})"
            )
        REGISTRIES[registry_key].check(value, f"{key}.{field_name}")


def _check_loss_on(stage: Any, key: str) -> None:
    from audiorl.rl.batch import TOKEN_ROLES

    if not stage.loss_on:
        raise ConfigError(f"'{key}.loss_on' is empty: name the token roles in the loss ({', '.join(TOKEN_ROLES)})")
    for role in stage.loss_on:
        _choice(role, tuple(TOKEN_ROLES), f"{key}.loss_on")


def validate_policy_gradient(stage: PolicyGradientConfig, recipe: Any, key: str) -> None:
    _positive(stage, key, ("max_steps", "prompts_per_step", "num_generations", "micro_batch_size", "epochs", "minibatches", "epsilon", "logging_steps"))
    _non_negative(stage, key, ("beta",))
    _check_optimizer(stage, key)
    _check_registry_names(stage, key, {"advantage": "advantage", "policy_loss": "policy_loss", "loss_aggregation": "loss_aggregation", "kl_estimator": "kl_estimator"})
    _choice(stage.kl_in, ("loss", "reward"), f"{key}.kl_in")
    _check_loss_on(stage, key)
    if stage.epsilon_high is not None and stage.epsilon_high <= 0:
        raise ConfigError(f"'{key}.epsilon_high' must be positive (or null: the same as epsilon), got {stage.epsilon_high}")
    if stage.tis_cap is not None and stage.tis_cap < 1:
        raise ConfigError(f"'{key}.tis_cap' must be >= 1 (or null to turn the correction off), got {stage.tis_cap}")
    if not 0 < stage.gamma <= 1 or not 0 <= stage.lam <= 1:
        raise ConfigError(f"'{key}': gamma must be in (0, 1] and lam in [0, 1], got gamma={stage.gamma}, lam={stage.lam}")
    if stage.advantage in ("grpo", "dr_grpo", "rloo") and stage.num_generations < 2:
        raise ConfigError(
            f"'{key}.num_generations' must be at least 2: the '{stage.advantage}' advantage compares completions within a group"
        )
    completions = stage.prompts_per_step * stage.num_generations
    if completions % stage.minibatches:
        raise ConfigError(f"'{key}.minibatches' ({stage.minibatches}) must divide prompts_per_step x num_generations ({completions})")
    per_minibatch = completions // stage.minibatches
    if per_minibatch % min(stage.micro_batch_size, per_minibatch):
        raise ConfigError(
            f"'{key}.micro_batch_size' ({stage.micro_batch_size}) must divide the completions of one optimizer step "
            f"(prompts_per_step x num_generations / minibatches = {per_minibatch})"
        )
    token_level = stage.advantage == "gae"
    if token_level and stage.algorithm != "ppo":
        raise ConfigError(f"'{key}.advantage' is 'gae', which needs a critic: use algorithm: ppo")
    if recipe.rollout.temperature == 0:
        raise ConfigError(f"'rollout.temperature' is 0 (greedy): {stage.algorithm} ({key}) needs sampled completions that differ")
    if isinstance(stage, PPOConfig):
        _check_optimizer(stage.critic, f"{key}.critic")
        _check_registry_names(stage, key, {"critic.value_loss": "critic.value_loss"})
        _positive(stage.critic, f"{key}.critic", ("value_clip",))
        _choice(stage.critic.model, ("copy", "shared_base"), f"{key}.critic.model")
        if stage.critic.model == "shared_base" and not recipe.lora.enabled:
            raise ConfigError(f"'{key}.critic.model' is 'shared_base', which needs lora.enabled: true (the critic is a second adapter)")
        _non_negative(stage.critic, f"{key}.critic", ("warmup_steps",))


def validate_dpo(stage: DPOConfig, recipe: Any, key: str) -> None:
    import os


    _positive(stage, key, ("max_steps", "prompts_per_step", "micro_batch_size", "beta", "logging_steps"))
    _check_optimizer(stage, key)
    _choice(stage.source, ("online", "offline"), f"{key}.source")
    _choice(stage.reference, ("auto", "adapter_disabled", "frozen_copy"), f"{key}.reference")
    _check_registry_names(stage, key, {"loss": "loss"})
    if stage.reference == "adapter_disabled" and not recipe.lora.enabled:
        raise ConfigError(f"'{key}.reference' is 'adapter_disabled' but lora.enabled is false: there is no adapter to disable")
    _check_loss_on(stage, key)
    _non_negative(stage, key, ("nll_weight",))
    if not 0 <= stage.label_smoothing < 0.5:
        raise ConfigError(f"'{key}.label_smoothing' must be in [0, 0.5), got {stage.label_smoothing}")
    if stage.sample_every < 0:
        raise ConfigError(f"'{key}.sample_every' must be >= 0, got {stage.sample_every}")
    if stage.source == "online":
        if stage.num_generations < 2:
            raise ConfigError(f"'{key}.num_generations' must be at least 2: online DPO pairs the best and worst of a group")
        if stage.min_margin < 0:
            raise ConfigError(f"'{key}.min_margin' must be >= 0, got {stage.min_margin}")
        if recipe.rollout.temperature == 0:
            raise ConfigError(f"'rollout.temperature' is 0 (greedy): online dpo ({key}) needs sampled completions that differ")
    else:
        if not stage.pairs:
            raise ConfigError(f"'{key}.pairs' is required for source: offline (a file with prompt, audio, chosen, rejected)")
        if not stage.pairs.endswith((".jsonl", ".json", ".parquet", ".csv")):
            raise ConfigError(f"'{key}.pairs': '{stage.pairs}' must be .jsonl, .json, .parquet or .csv")
        if (recipe.data.synthesize is None or not recipe.data.synthesize.pairs_template) and not os.path.isfile(stage.pairs):
            missing_input(f"'{key}.pairs': '{stage.pairs}' does not exist")


ALGORITHMS.register("sft", Algorithm(SFTConfig, "audiorl.rl.sft:SFTStage", validate_sft))
ALGORITHMS.register("grpo", Algorithm(GRPOConfig, "audiorl.rl.policy_gradient:PolicyGradientStage", validate_policy_gradient))
ALGORITHMS.register("ppo", Algorithm(PPOConfig, "audiorl.rl.policy_gradient:PolicyGradientStage", validate_policy_gradient))
ALGORITHMS.register("dpo", Algorithm(DPOConfig, "audiorl.rl.dpo:DPOStage", validate_dpo))


def stage_uses_rewards(stage: Any) -> bool:
    """Whether the stage calls reward functions (to train, or to log the sampled reward)."""
    if isinstance(stage, PolicyGradientConfig):
        return True
    if isinstance(stage, DPOConfig):
        return stage.source == "online" or stage.sample_every > 0
    return False


def needs_rewards(stage: Any) -> bool:
    """Whether the stage cannot run without rewards (they drive its learning)."""
    return isinstance(stage, PolicyGradientConfig) or (isinstance(stage, DPOConfig) and stage.source == "online")
