"""The recipe schema: typed dataclasses, loaded from YAML + ``key=value`` overrides and validated
before anything heavy (a model, an audio encoder, vLLM) loads.

Errors name the key path; an unknown key also names the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from audiorl.common.errors import ConfigError, nearest
from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import (
    ConfigAttributeError,
    ConfigKeyError,
    MissingMandatoryValue,
    OmegaConfBaseException,
    ValidationError,
)


@dataclass
class ModelConfig:
    path: str = MISSING  # local Hugging Face-format directory of the audio LLM
    build_tiny: bool = False  # write audiorl's tiny random Qwen2-Audio to `path` first if it is not there
    tiny_seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    freeze_audio_encoder: bool = True  # as in Step-Audio 2; frozen encoder outputs are cached across steps
    train_projector: bool = False  # also train the audio adaptor (saved with the LoRA adapter)
    audio_cache_mb: int = 1024  # memory for cached audio-encoder outputs


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Optional[str] = None  # regex over module names; default: the language model's projections


@dataclass
class SynthConfig:
    task: str = "pitch"  # pitch | speech
    seed: int = 0
    n_train: int = 256
    n_eval: int = 64


@dataclass
class DataConfig:
    train: str = MISSING  # .jsonl / .json / .parquet / .csv; audio paths relative to the file
    eval: Optional[str] = None
    synthesize: Optional[SynthConfig] = None  # write the embedded data set first if `train` is not there
    audio_column: str = "audio"
    prompt_column: str = "prompt"
    system_prompt: Optional[str] = None
    max_train_samples: Optional[int] = None
    max_eval_samples: Optional[int] = None
    on_bad_audio: str = "raise"  # raise | skip (skip drops rows whose audio is missing or unreadable, and reports them)


@dataclass
class VLLMConfig:
    mode: str = "colocate"  # colocate (vLLM in the trainer's process) | server (`audiorl rollout-server` processes)
    servers: list[str] = field(default_factory=list)  # server mode: base URLs; several = data-parallel rollouts
    max_model_len: int = 4096
    kv_cache_mb: Optional[int] = None  # default: 256 on CPU, from gpu_memory_utilization on GPU
    gpu_memory_utilization: float = 0.3  # colocate on GPU: the share of GPU memory vLLM may take
    enforce_eager: Optional[bool] = None  # default: true on CPU (no CUDA graphs there)
    sleep_mode: bool = True  # colocate on GPU: offload vLLM's weights, drop its KV cache while the trainer steps
    max_audio_per_prompt: int = 1
    request_timeout_s: float = 600.0  # server mode: per request
    startup_timeout_s: float = 900.0  # server mode: how long to wait for servers to come up
    retries: int = 2  # server mode: retries after a connection failure or timeout
    # server mode: how weights reach the servers. http (safetensors in the request body) | gloo | nccl
    # (a process group: broadcast from the trainer) | auto (nccl when the trainer is on a GPU, else http)
    weight_transport: str = "auto"
    weight_transport_host: Optional[str] = None  # the trainer's address as the servers see it (default: from the route to the first server)
    weight_transport_port: int = 0  # 0: any free port
    weight_bucket_mb: int = 512  # tensors are packed into flat buffers of at most this size per broadcast


@dataclass
class RolloutConfig:
    backend: str = "auto"  # auto (vllm on a GPU machine with vLLM installed, else hf) | hf | vllm
    max_new_tokens: int = 64
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    batch_size: int = 64  # hf: sequences per generate call
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    # Truncated importance sampling: weight each token's loss by min(p_trainer / p_rollout, tis_cap) to
    # correct for rollout/trainer mismatch (vLLM kernels, bf16). None: off. The mismatch is logged either way.
    tis_cap: Optional[float] = None


@dataclass
class RewardSpec:
    # a registered name (`audiorl rewards` lists them), an entry point of the `audiorl.rewards` group,
    # path/to/file.py:function (relative to the working directory or the recipe) or module:function
    name: str = MISSING
    weight: float = 1.0
    kwargs: dict[str, Any] = field(default_factory=dict)
    alias: Optional[str] = None  # name used in logs (default: the function's name)
    on_error: str = "raise"  # raise | zero | skip: what a sample the reward fails on gets
    timeout_s: Optional[float] = None  # per call; a call that overruns counts as failing
    workers: int = 0  # >0: run in that many worker processes (CPU-heavy rewards)
    batch_size: Optional[int] = None  # samples per call (default: the whole batch, or split across workers)


@dataclass
class SFTStageConfig:
    enabled: bool = False
    completion_template: str = "{completion}"  # formatted with the row's columns
    shuffle_labels: bool = False  # shuffle `label` across rows: learn the answer format, not the audio
    epochs: float = 1.0
    learning_rate: float = 2e-4
    batch_size: int = 8
    max_samples: Optional[int] = None
    logging_steps: int = 5


@dataclass
class GRPOStageConfig:
    enabled: bool = True
    max_steps: int = 100
    prompts_per_step: int = 8  # unique prompts per optimizer step
    num_generations: int = 8  # completions per prompt (the group)
    micro_batch_size: int = 32  # completions per forward/backward
    learning_rate: float = 1e-4
    lr_scheduler: str = "constant"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    beta: float = 0.0  # KL to the reference model (0: no reference forward)
    epsilon: float = 0.2  # PPO clip
    num_iterations: int = 1  # optimisation passes per generation batch
    loss_type: str = "dapo"  # TRL loss: grpo | dr_grpo | dapo | bnpo
    advantage: str = "grpo"  # advantage estimator: grpo | dr_grpo | rloo
    logging_steps: int = 1


@dataclass
class EvalConfig:
    every_steps: int = 10  # held-out greedy evaluation during GRPO (0: only before and after)
    batch_size: int = 64
    max_new_tokens: Optional[int] = None  # default: rollout.max_new_tokens


@dataclass
class RecipeConfig:
    seed: int = 0
    output_dir: str = MISSING
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    rewards: list[RewardSpec] = field(default_factory=list)
    sft: SFTStageConfig = field(default_factory=SFTStageConfig)
    grpo: GRPOStageConfig = field(default_factory=GRPOStageConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: Optional[int] = None  # torch CPU threads (default: torch's choice)


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.on_bad_audio": ("raise", "skip"),
    "data.synthesize.task": ("pitch", "speech"),
    "grpo.loss_type": ("grpo", "dr_grpo", "dapo", "bnpo"),
    "grpo.lr_scheduler": ("constant", "linear", "cosine", "constant_with_warmup"),
    "rollout.vllm.mode": ("colocate", "server"),
    "rollout.vllm.weight_transport": ("auto", "http", "gloo", "nccl"),
}


# ---------------------------------------------------------------------- loading
def _valid_keys(schema: Any, path: list[str]) -> list[str]:
    node = schema
    for part in path:
        if dataclasses.is_dataclass(node):
            node = getattr(node, part, None) if not isinstance(node, type) else None
        else:
            return []
    if dataclasses.is_dataclass(node):
        return [f.name for f in dataclasses.fields(node)]
    return []


def _explain(exc: OmegaConfBaseException, source: str, schema: type = None) -> ConfigError:
    """An OmegaConf error as a ConfigError naming the file, the key and (unknown keys) the nearest valid one."""
    schema = schema or RecipeConfig
    key = re.sub(r"\[(\d+)\]", r".\1", getattr(exc, "full_key", None) or "")
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, leaf = key.rpartition(".")
        parent_path = [p for p in parent.split(".") if p and not p.isdigit()] if parent else []
        if schema is RecipeConfig and parent_path[:1] == ["rewards"]:
            valid = [f.name for f in dataclasses.fields(RewardSpec)]
        else:
            valid = _valid_keys(schema(), parent_path)
        return ConfigError(f"{source}: unknown key '{key}'{nearest(leaf, valid)}; valid keys here: {', '.join(valid)}")
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"{source}: '{key}' is required but not set")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return ConfigError(f"{source}: '{key}': {msg}")
    return ConfigError(f"{source}: {str(exc).splitlines()[0]}" + (f" (key '{key}')" if key else ""))


def _apply_overrides(config: DictConfig, overrides: list[str]) -> None:
    """``key=value`` (YAML-typed value; list items by index: ``rewards.0.weight=0.5``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        value = OmegaConf.from_dotlist([f"value={raw}"])["value"]
        OmegaConf.update(config, key, value, merge=True)


def recipe_kind(path: str) -> str:
    """``reward_model`` for a recipe that says ``recipe: reward_model`` (``audiorl train-rm``), else ``rl``."""
    try:
        loaded = OmegaConf.load(path)
    except Exception as exc:
        raise ConfigError(f"recipe '{path}' could not be read: {exc}") from None
    return "reward_model" if isinstance(loaded, DictConfig) and loaded.get("recipe") == "reward_model" else "rl"


def load_config(schema: type, path: str | None = None, overrides: list[str] | None = None) -> Any:
    """Merge the ``schema`` dataclass's defaults, the YAML at ``path`` and ``key=value`` overrides (unvalidated)."""
    merged = OmegaConf.structured(schema)
    source = path or "<defaults>"
    try:
        if path is not None:
            if not os.path.isfile(path):
                raise ConfigError(f"recipe '{path}' does not exist")
            loaded = OmegaConf.load(path)
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: a recipe must be a mapping of keys")
            merged = OmegaConf.merge(merged, loaded)
        if overrides:
            source = f"{source} + overrides"
            _apply_overrides(merged, overrides)
        OmegaConf.resolve(merged)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source, schema) from None


def load_recipe(path: str | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Merge the schema defaults, the YAML at ``path`` and ``key=value`` overrides; then validate."""
    config: RecipeConfig = load_config(RecipeConfig, path, overrides)
    if path is not None:
        _anchor_reward_files(config, os.path.dirname(os.path.abspath(path)))
    validate(config)
    return config


def _anchor_reward_files(config: RecipeConfig, recipe_dir: str) -> None:
    """A reward named ``file.py:fn`` that is not in the working directory is looked for next to the recipe."""
    for spec in config.rewards:
        path, sep, attr = spec.name.rpartition(":")
        if sep and path.endswith(".py") and not os.path.isabs(path) and not os.path.isfile(path):
            candidate = os.path.join(recipe_dir, path)
            if os.path.isfile(candidate):
                spec.name = f"{candidate}:{attr}"


def to_yaml(config: RecipeConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


# ------------------------------------------------------------------- validating
def _get(config: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        if config is None:
            return None
        config = getattr(config, part)
    return config


def validate(config: RecipeConfig) -> None:
    """Cross-field rules, choices, names and files. Raises ConfigError; loads nothing heavy."""
    for key, choices in CHOICES.items():
        value = _get(config, key)
        if value is not None and value not in choices:
            raise ConfigError(f"'{key}' is '{value}'{nearest(str(value), choices)}; choose one of: {', '.join(choices)}")

    positive = {
        "grpo.max_steps": config.grpo.max_steps,
        "grpo.prompts_per_step": config.grpo.prompts_per_step,
        "grpo.num_generations": config.grpo.num_generations,
        "grpo.micro_batch_size": config.grpo.micro_batch_size,
        "grpo.num_iterations": config.grpo.num_iterations,
        "rollout.max_new_tokens": config.rollout.max_new_tokens,
        "rollout.batch_size": config.rollout.batch_size,
        "sft.batch_size": config.sft.batch_size,
        "eval.batch_size": config.eval.batch_size,
        "lora.r": config.lora.r,
        "rollout.vllm.max_model_len": config.rollout.vllm.max_model_len,
        "rollout.vllm.request_timeout_s": config.rollout.vllm.request_timeout_s,
        "rollout.vllm.startup_timeout_s": config.rollout.vllm.startup_timeout_s,
        "rollout.vllm.weight_bucket_mb": config.rollout.vllm.weight_bucket_mb,
    }
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' must be positive, got {value}")
    if config.grpo.enabled:
        if config.grpo.num_generations < 2:
            raise ConfigError("'grpo.num_generations' must be at least 2: GRPO compares completions within a group")
        completions = config.grpo.prompts_per_step * config.grpo.num_generations
        if completions % config.grpo.micro_batch_size:
            raise ConfigError(
                f"'grpo.micro_batch_size' ({config.grpo.micro_batch_size}) must divide prompts_per_step x "
                f"num_generations ({completions})"
            )
    if config.rollout.temperature < 0:
        raise ConfigError("'rollout.temperature' must be >= 0 (0 is greedy)")
    if config.grpo.enabled and config.rollout.temperature == 0:
        raise ConfigError("'rollout.temperature' is 0 (greedy): GRPO needs sampled completions that differ")
    if not 0 < config.rollout.top_p <= 1:
        raise ConfigError(f"'rollout.top_p' must be in (0, 1], got {config.rollout.top_p}")
    vllm = config.rollout.vllm
    if config.rollout.backend == "vllm" and vllm.mode == "server" and not vllm.servers:
        raise ConfigError("'rollout.vllm.servers' is empty: server mode needs the URLs of `audiorl rollout-server`s")
    for url in vllm.servers:
        if not re.match(r"^https?://[^/\s]+", url):
            raise ConfigError(f"'rollout.vllm.servers': '{url}' is not an http(s) URL such as http://host:8000")
    if vllm.retries < 0:
        raise ConfigError(f"'rollout.vllm.retries' must be >= 0, got {vllm.retries}")
    if config.rollout.tis_cap is not None and config.rollout.tis_cap < 1:
        raise ConfigError(f"'rollout.tis_cap' must be >= 1 (or null to turn the correction off), got {config.rollout.tis_cap}")
    if config.eval.every_steps < 0:
        raise ConfigError("'eval.every_steps' must be >= 0")
    from audiorl.rl.algos import ADVANTAGES
    from audiorl.rollouts.base import ROLLOUT_BACKENDS

    if config.grpo.advantage not in ADVANTAGES:
        raise ConfigError(
            f"'grpo.advantage' is '{config.grpo.advantage}'{nearest(config.grpo.advantage, ADVANTAGES.names())}; "
            f"choose one of: {', '.join(ADVANTAGES.names())}"
        )
    if config.rollout.backend != "auto" and config.rollout.backend not in ROLLOUT_BACKENDS:
        names = ["auto", *ROLLOUT_BACKENDS.names()]
        raise ConfigError(
            f"'rollout.backend' is '{config.rollout.backend}'{nearest(config.rollout.backend, names)}; "
            f"choose one of: {', '.join(names)}"
        )
    if config.grpo.enabled and not config.rewards:
        raise ConfigError("'rewards' is empty: GRPO needs at least one reward")
    if config.rewards:
        from audiorl.rewards import RewardSet

        try:
            RewardSet(config.rewards)
        except ConfigError as exc:
            raise ConfigError(f"rewards: {exc}") from None
        except Exception as exc:  # registry errors name the reward and the registered ones
            raise ConfigError(f"rewards: {exc}") from None

    model_dir = config.model.path
    if not config.model.build_tiny and not os.path.isfile(os.path.join(model_dir, "config.json")):
        raise ConfigError(
            f"'model.path': '{model_dir}' is not a Hugging Face model directory (no config.json); "
            "set model.build_tiny=true to build the tiny test model there"
        )
    for key in ("train", "eval"):
        path = getattr(config.data, key)
        if path is None:
            continue
        if config.data.synthesize is None and not os.path.isfile(path):
            raise ConfigError(f"'data.{key}': '{path}' does not exist")
        if not path.endswith((".jsonl", ".json", ".parquet", ".csv")):
            raise ConfigError(f"'data.{key}': '{path}' must be .jsonl, .json, .parquet or .csv")
