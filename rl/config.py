"""The recipe schema: typed dataclasses, loaded from YAML + ``key=value`` overrides and validated
before anything heavy (a model, an audio encoder, vLLM) loads.

Errors name the key path; an unknown key also names the nearest valid one.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional

from audiorl.common.errors import ConfigError, missing_input, nearest
from audiorl.rl.stage_config import ALGORITHMS, RewardSpec, needs_rewards, stage_uses_rewards
from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
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
    build_tiny: bool = False  # write one of audiorl's tiny random models to `path` first if it is not there
    tiny_family: str = "qwen2_audio"  # which: qwen2_audio | qwen2_5_omni | qwen3_omni_moe | step_audio2
    tiny_seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda | cuda:N
    freeze_audio_encoder: bool = True  # as in Step-Audio 2; frozen encoder outputs are cached across steps
    train_projector: bool = False  # also train the audio adaptor (saved with the LoRA adapter)
    audio_cache_mb: int = 1024  # memory for cached audio-encoder outputs
    # think mode: every reply opens with "<think>\n", written at the end of the prompt (Step-Audio-2-mini-Think's
    # prefix); rewards see the reply with it, and SFT completions that start with it lose it (the prompt has it)
    think: bool = False
    # speech output (Step-Audio 2): the prompt ends with <tts_start>, the release's spoken-reply prefix; the reply
    # interleaves 1 text token with 4 speech codes, and rewards that name audio_codes score the codes
    speech_output: bool = False


@dataclass
class LoraConfig:
    enabled: bool = True
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: Optional[str] = None  # regex over module names; default: the language model's projections
    # parameter names (suffixes) LoRA also adapts as PEFT's target_parameters: a transformers-5 MoE's fused experts,
    # e.g. [mlp.experts.gate_up_proj, mlp.experts.down_proj] (Qwen3-Omni; opt-in, attention is the family default)
    target_parameters: Optional[list[str]] = None


@dataclass
class SynthConfig:
    task: str = "pitch"  # pitch | speech
    seed: int = 0
    n_train: int = 256
    n_eval: int = 64
    # also write pairs.jsonl next to train.jsonl: per training row, this template with the right label
    # (chosen) vs a wrong one (rejected), for offline DPO
    pairs_template: Optional[str] = None
    speech_tasks: Optional[list[str]] = None  # speech: the questions asked (asr, gender, speed, pitch; default all, in turn)


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


@dataclass
class EvalConfig:
    every_steps: int = 10  # held-out greedy evaluation every N steps of an RL stage (0: only before and after each)
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
    rewards: list[RewardSpec] = field(default_factory=list)  # every stage's rewards unless the stage names its own
    # The stages, in order, each from the previous one's weights: sft | grpo | ppo | dpo (rl/stage_config.py)
    stages: list[Any] = field(default_factory=list)
    eval: EvalConfig = field(default_factory=EvalConfig)
    threads: Optional[int] = None  # torch CPU threads (default: torch's choice)
    # replace the outputs of an earlier run in output_dir (else a run refuses a used output_dir); also `train --overwrite`
    overwrite: bool = False

    def enabled_stages(self) -> list[Any]:
        return [s for s in self.stages if s.enabled]


CHOICES = {
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.on_bad_audio": ("raise", "skip"),
    "data.synthesize.task": ("pitch", "speech"),
    "rollout.vllm.mode": ("colocate", "server"),
    "rollout.vllm.weight_transport": ("auto", "http", "gloo", "nccl"),
}

DEVICES = ("auto", "cpu", "cuda", "cuda:0")
DEVICE_RE = re.compile(r"auto|cpu|cuda(:\d+)?")

# Keys of earlier recipe formats -> where the setting lives now.
MOVED = {
    "sft": "an `algorithm: sft` entry of `stages:`",
    "grpo": "an `algorithm: grpo` entry of `stages:`",
    "rollout.tis_cap": "`tis_cap` of a grpo/ppo stage (stages.<name>.tis_cap)",
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


def _explain(exc: OmegaConfBaseException, source: str, schema: type = None, prefix: str = "") -> ConfigError:
    """An OmegaConf error as a ConfigError naming the file, the key and (unknown keys) the nearest valid one.

    ``prefix``: where ``schema`` sits in the recipe (``stages.2.`` for a stage's config).
    """
    schema = schema or RecipeConfig
    key = re.sub(r"\[(\d+)\]", r".\1", getattr(exc, "full_key", None) or "")
    if isinstance(exc, (ConfigKeyError, ConfigAttributeError)) and key:
        parent, _, leaf = key.rpartition(".")
        parent_path = [p for p in parent.split(".") if p and not p.isdigit()] if parent else []
        moved = MOVED.get(key) if not prefix else None
        if moved:
            return ConfigError(f"{source}: '{key}' is no longer a recipe key: it is now {moved} (see recipes/quickstart.yaml)")
        if "rewards" in parent_path:
            valid = [f.name for f in dataclasses.fields(RewardSpec)]
        else:
            valid = _valid_keys(schema(), parent_path)
        return ConfigError(f"{source}: unknown key '{prefix}{key}'{nearest(leaf, valid)}; valid keys here: {', '.join(valid)}")
    key = prefix + key
    if isinstance(exc, MissingMandatoryValue):
        return ConfigError(f"{source}: '{key}' is required but not set")
    if isinstance(exc, ValidationError):
        msg = str(exc).splitlines()[0]
        return ConfigError(f"{source}: '{key}': {msg}")
    return ConfigError(f"{source}: {str(exc).splitlines()[0]}" + (f" (key '{key}')" if key else ""))


def _stage_names(config: DictConfig) -> dict[str, int]:
    stages = config.get("stages")
    names: dict[str, int] = {}
    if isinstance(stages, ListConfig):
        for i, stage in enumerate(stages):
            if isinstance(stage, DictConfig):
                names.setdefault(str(stage.get("name") or stage.get("algorithm")), i)
    return names


def _apply_overrides(config: DictConfig, overrides: list[str]) -> None:
    """``key=value`` (YAML-typed value; list items by index: ``rewards.0.weight=0.5``; stages also by name:
    ``stages.grpo.max_steps=20``)."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override '{item}' is not of the form key=value")
        parts = key.split(".")
        if len(parts) > 2 and parts[0] == "stages" and not parts[1].lstrip("-").isdigit():
            names = _stage_names(config)
            if parts[1] not in names:
                raise ConfigError(f"override '{item}': no stage named '{parts[1]}'{nearest(parts[1], names)}; stages: {', '.join(names) or '(none)'}")
            parts[1] = str(names[parts[1]])
            key = ".".join(parts)
        _check_override_path(config, key.split("."), item)
        try:
            value = OmegaConf.from_dotlist([f"value={raw}"])["value"]
        except Exception as exc:  # noqa: BLE001 - yaml's own errors, OmegaConf's
            reason = (str(exc).splitlines() or [type(exc).__name__])[0]
            raise ConfigError(f"override '{item}': the value '{raw}' is not valid YAML: {reason}") from None
        try:
            OmegaConf.update(config, key, value, merge=True)
        except OmegaConfBaseException:
            raise  # explained by the caller, which names the key and the nearest valid one
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:  # OmegaConf's own raw errors
            raise ConfigError(f"override '{item}': cannot set '{key}': {exc}") from None


def _check_override_path(config: DictConfig, parts: list[str], item: str) -> None:
    """Walk ``parts`` through the merged recipe: list items by a valid index, nothing through a null or a scalar.

    OmegaConf would otherwise answer ``rewards.5.weight`` with a type error about RewardSpec,
    ``rewards.-5`` with a Python negative index, and ``rewards.x`` with a raw traceback.
    """
    node: Any = config
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if not part:
            raise ConfigError(f"override '{item}': empty key part in '{'.'.join(parts)}'")
        if isinstance(node, ListConfig):
            size = len(node)
            if not re.fullmatch(r"-?\d+", part):
                raise ConfigError(f"override '{item}': '{here}': a list takes an index 0-{size - 1}, not '{part}'")
            index = int(part)
            if not 0 <= index < size:
                where = f"indices 0-{size - 1}" if size else "no entries"
                raise ConfigError(
                    f"override '{item}': '{here}' is out of range: '{'.'.join(parts[:depth])}' has {where} "
                    f"(to add an entry, set the whole list: {'.'.join(parts[:depth])}=[...])"
                )
            node = node[index]
        elif isinstance(node, DictConfig):
            if part not in node:
                if re.fullmatch(r"-?\d+", parts[depth + 1]):  # OmegaConf would make a dict keyed by the index
                    raise ConfigError(
                        f"override '{item}': '{here}' is not set, so it has no entry {parts[depth + 1]}: "
                        f"set '{here}' as a whole (e.g. {here}=[...])"
                    )
                return  # an unknown key: OmegaConf names it and the nearest valid one
            node = node._get_node(part)
            if node is None or node._is_none():
                raise ConfigError(
                    f"override '{item}': '{here}' is null, so it has no '{parts[depth + 1]}': "
                    f"set '{here}' as a whole (e.g. {here}=[...] or {here}={{...}})"
                )
            if not isinstance(node, (DictConfig, ListConfig)):
                raise ConfigError(f"override '{item}': '{here}' is a single value, so it has no '{parts[depth + 1]}'")
        else:
            return


def _merge_named(merged: DictConfig, loaded: DictConfig, source: str) -> DictConfig:
    """``OmegaConf.merge``, whose TypeError/ValueError on a wrong container (a mapping where a list goes) names no key."""
    try:
        return OmegaConf.merge(merged, loaded)
    except (TypeError, ValueError) as exc:
        for key in loaded:  # find the top-level key that does not fit
            try:
                OmegaConf.merge(merged, {key: loaded._get_node(key)})
            except (TypeError, ValueError, OmegaConfBaseException):
                reason = (str(exc).splitlines() or [type(exc).__name__])[0]
                raise ConfigError(f"{source}: '{key}' has the wrong shape ({reason}); see `audiorl validate --list-keys`") from None
        raise ConfigError(f"{source}: {(str(exc).splitlines() or [type(exc).__name__])[0]}") from None


def check_reward_entry(entry: Any, source: str, prefix: str) -> None:
    """One reward entry: a mapping with a ``name``, its ``kwargs`` a mapping (errors say ``rewards.N.``)."""
    if not isinstance(entry, (DictConfig, dict)):
        raise ConfigError(f"{source}: '{prefix.rstrip('.')}' must be a mapping such as {{name: {entry}}}, got {entry!r}")
    kwargs = entry.get("kwargs")
    if kwargs is not None and not isinstance(kwargs, (DictConfig, dict)):
        raise ConfigError(f"{source}: '{prefix}kwargs' must be a mapping of option: value, got {kwargs!r}")


def _check_reward_entries(entries: Any, source: str, prefix: str) -> None:
    """Type each reward entry alone: a merged list reports a typo without its ``rewards.N.`` path."""
    if not isinstance(entries, ListConfig):
        return
    for j, entry in enumerate(entries):
        check_reward_entry(entry, source, f"{prefix}{j}.")
        try:
            OmegaConf.merge(OmegaConf.structured(RewardSpec), entry)
        except OmegaConfBaseException as exc:
            raise _explain(exc, source, RewardSpec, prefix=f"{prefix}{j}.") from None


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
            try:
                loaded = OmegaConf.load(path)
            except OmegaConfBaseException:
                raise
            except Exception as exc:  # noqa: BLE001 - yaml's parser errors, a file that is not text
                reason = " ".join(str(exc).split()) or type(exc).__name__
                raise ConfigError(f"recipe '{path}' is not valid YAML: {reason}") from None
            if not isinstance(loaded, DictConfig):
                raise ConfigError(f"{path}: a recipe must be a mapping of keys")
            if schema is RecipeConfig:
                _check_reward_entries(loaded.get("rewards"), path, "rewards.")
            merged = _merge_named(merged, loaded, path)
        if overrides:
            source = f"{source} + overrides"
            _apply_overrides(merged, overrides)
        OmegaConf.resolve(merged)
        return OmegaConf.to_object(merged)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source, schema) from None


def load_recipe(path: str | None = None, overrides: list[str] | None = None) -> RecipeConfig:
    """Merge the schema defaults, the YAML at ``path`` and ``key=value`` overrides; type the stages; validate."""
    config: RecipeConfig = load_config(RecipeConfig, path, overrides)
    source = (path or "<defaults>") + (" + overrides" if overrides else "")
    config.stages = [typed_stage(raw, i, source) for i, raw in enumerate(config.stages)]
    if path is not None:
        _anchor_reward_files(config, os.path.dirname(os.path.abspath(path)))
    validate(config)
    return config


def typed_stage(raw: Any, index: int, source: str) -> Any:
    """One entry of ``stages:`` as its algorithm's config dataclass (errors say ``stages.<index>.<key>``)."""
    if dataclasses.is_dataclass(raw):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: 'stages.{index}' must be a mapping with an 'algorithm' key, got {raw!r}")
    algorithm = raw.get("algorithm")
    if algorithm is None:
        raise ConfigError(f"{source}: 'stages.{index}.algorithm' is required ({', '.join(ALGORITHMS.names())})")
    if algorithm not in ALGORITHMS:
        raise ConfigError(
            f"{source}: 'stages.{index}.algorithm' is '{algorithm}'{nearest(str(algorithm), ALGORITHMS.names())}; "
            f"choose one of: {', '.join(ALGORITHMS.names())}"
        )
    schema = ALGORITHMS.get(algorithm).config
    if isinstance(raw.get("rewards"), list):  # typed one by one, so that an error names its entry
        typed = []
        for j, entry in enumerate(raw["rewards"]):
            check_reward_entry(entry, source, f"stages.{index}.rewards.{j}.")
            try:
                typed.append(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(RewardSpec), entry)))
            except OmegaConfBaseException as exc:
                raise _explain(exc, source, RewardSpec, prefix=f"stages.{index}.rewards.{j}.") from None
        raw = {**raw, "rewards": typed}
    try:
        node = OmegaConf.merge(OmegaConf.structured(schema), raw)
        stage = OmegaConf.to_object(node)
    except OmegaConfBaseException as exc:
        raise _explain(exc, source, schema, prefix=f"stages.{index}.") from None
    except (TypeError, ValueError) as exc:  # e.g. a mapping where the schema has a list
        raise ConfigError(f"{source}: 'stages.{index}': {exc}") from None
    stage.name = stage.name or stage.algorithm
    return stage


def _anchor_reward_files(config: RecipeConfig, recipe_dir: str) -> None:
    """A reward named ``file.py:fn`` that is not in the working directory is looked for next to the recipe."""
    specs = list(config.rewards) + [spec for stage in config.stages for spec in (stage.rewards or [])]
    for spec in specs:
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
    """Cross-field rules, choices, names and files. Raises ConfigError; loads nothing heavy.

    Each stage is checked by its algorithm's own ``validate`` (rl/stage_config.py).
    """
    _check_finite(config, "")
    _check_text_lists(config, "")
    for key, choices in CHOICES.items():
        value = _get(config, key)
        if value is not None and value not in choices:
            raise ConfigError(f"'{key}' is '{value}'{nearest(str(value), choices)}; choose one of: {', '.join(choices)}")
    if not DEVICE_RE.fullmatch(config.model.device):
        raise ConfigError(
            f"'model.device' is '{config.model.device}'{nearest(config.model.device, DEVICES)}; "
            "choose one of: auto, cpu, cuda, cuda:N (a GPU index)"
        )
    _check_ranges(config)
    _check_output_dir(config.output_dir)

    positive = {
        "rollout.max_new_tokens": config.rollout.max_new_tokens,
        "rollout.batch_size": config.rollout.batch_size,
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
    if config.rollout.temperature < 0:
        raise ConfigError("'rollout.temperature' must be >= 0 (0 is greedy)")
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
    if config.eval.every_steps < 0:
        raise ConfigError("'eval.every_steps' must be >= 0")
    from audiorl.rollouts.base import ROLLOUT_BACKENDS

    if config.rollout.backend != "auto" and config.rollout.backend not in ROLLOUT_BACKENDS:
        names = ["auto", *ROLLOUT_BACKENDS.names()]
        raise ConfigError(
            f"'rollout.backend' is '{config.rollout.backend}'{nearest(config.rollout.backend, names)}; "
            f"choose one of: {', '.join(names)}"
        )
    synth = config.data.synthesize
    if synth is not None:
        from audiorl.data.synth import SPEECH_TASKS

        for key in ("n_train", "n_eval"):
            if getattr(synth, key) <= 0:
                raise ConfigError(f"'data.synthesize.{key}' must be positive, got {getattr(synth, key)}")
        for task in synth.speech_tasks or []:
            if task not in SPEECH_TASKS:
                raise ConfigError(f"'data.synthesize.speech_tasks': '{task}'{nearest(task, SPEECH_TASKS)}; choose from {', '.join(SPEECH_TASKS)}")
    _validate_stages(config)
    _validate_rewards(config.rewards, "rewards")

    from audiorl.model.tiny import TINY_FAMILIES

    if config.model.tiny_family not in TINY_FAMILIES:
        raise ConfigError(
            f"'model.tiny_family': '{config.model.tiny_family}'{nearest(config.model.tiny_family, TINY_FAMILIES)}; "
            f"choose from {', '.join(TINY_FAMILIES)}"
        )
    model_dir = config.model.path
    if not config.model.build_tiny and not os.path.isfile(os.path.join(model_dir, "config.json")):
        missing_input(
            f"'model.path': '{model_dir}' is not a Hugging Face model directory (no config.json); "
            "set model.build_tiny=true to build the tiny test model there"
        )
    for key in ("train", "eval"):
        path = getattr(config.data, key)
        if path is None:
            continue
        if not path.endswith((".jsonl", ".json", ".parquet", ".csv")):
            raise ConfigError(f"'data.{key}': '{path}' must be .jsonl, .json, .parquet or .csv")
        if config.data.synthesize is None and not os.path.isfile(path):
            missing_input(f"'data.{key}': '{path}' does not exist")


def _check_finite(node: Any, path: str) -> None:
    """No NaN or infinity anywhere in the recipe: ``lr: .nan`` passes every ``<= 0`` test and trains on NaN.

    Reward ``kwargs`` (the only mappings) are the reward's own to check: an infinite limit may mean "none".
    """
    def child(name: object) -> str:
        return f"{path}.{name}" if path else str(name)

    if dataclasses.is_dataclass(node):
        for f in dataclasses.fields(node):
            _check_finite(getattr(node, f.name), child(f.name))
    elif isinstance(node, (list, tuple)):
        for i, item in enumerate(node):
            _check_finite(item, child(i))
    elif isinstance(node, float) and not math.isfinite(node):
        raise ConfigError(f"'{path}' is {node}: it must be a finite number")


def _check_text_lists(node: Any, path: str) -> None:
    """Entries of ``list[str]`` fields are text: OmegaConf lets ``[{}]`` through into ``list[str]``."""
    import typing

    if not dataclasses.is_dataclass(node):
        if isinstance(node, list):
            for i, item in enumerate(node):
                _check_text_lists(item, f"{path}.{i}")
        return
    hints = typing.get_type_hints(type(node))
    for f in dataclasses.fields(node):
        key = f"{path}.{f.name}" if path else f.name
        value = getattr(node, f.name)
        if hints.get(f.name) in (list[str], Optional[list[str]]) and value is not None:
            for i, item in enumerate(value):
                if not isinstance(item, str):
                    raise ConfigError(f"'{key}.{i}' must be text, got {type(item).__name__} {item!r:.40}")
        else:
            _check_text_lists(value, key)


def _check_ranges(config: RecipeConfig) -> None:
    """Bounds of the numbers outside the stages (each stage checks its own in rl/stage_config.py)."""
    non_negative = {
        "rollout.top_k": config.rollout.top_k,  # 0: no top-k filtering
        "model.audio_cache_mb": config.model.audio_cache_mb,
        "rollout.vllm.weight_transport_port": config.rollout.vllm.weight_transport_port,
        "lora.dropout": config.lora.dropout,
    }
    for key, value in non_negative.items():
        if value < 0:
            raise ConfigError(f"'{key}' must be >= 0, got {value}")
    positive_or_null = {
        "eval.max_new_tokens": config.eval.max_new_tokens,
        "data.max_train_samples": config.data.max_train_samples,
        "data.max_eval_samples": config.data.max_eval_samples,
        "threads": config.threads,
        "rollout.vllm.kv_cache_mb": config.rollout.vllm.kv_cache_mb,
    }
    for key, value in positive_or_null.items():
        if value is not None and value <= 0:
            raise ConfigError(f"'{key}' must be positive (or null for the default), got {value}")
    if config.lora.alpha <= 0:
        raise ConfigError(f"'lora.alpha' must be positive (the adapter's scale is alpha / r), got {config.lora.alpha}")
    if not config.lora.dropout < 1:
        raise ConfigError(f"'lora.dropout' must be in [0, 1), got {config.lora.dropout}")
    if config.rollout.vllm.max_audio_per_prompt <= 0:
        raise ConfigError(f"'rollout.vllm.max_audio_per_prompt' must be positive, got {config.rollout.vllm.max_audio_per_prompt}")
    if not 0 < config.rollout.vllm.gpu_memory_utilization <= 1:
        raise ConfigError(f"'rollout.vllm.gpu_memory_utilization' must be in (0, 1], got {config.rollout.vllm.gpu_memory_utilization}")
    if config.rollout.vllm.weight_transport_port > 65535:
        raise ConfigError(f"'rollout.vllm.weight_transport_port' must be a port (0-65535), got {config.rollout.vllm.weight_transport_port}")


def _check_output_dir(path: str) -> None:
    """``output_dir`` can be created and written, found before a model loads rather than at the first save."""
    if not path or not str(path).strip():
        raise ConfigError("'output_dir' is empty")
    full = os.path.abspath(path)
    if os.path.exists(full) and not os.path.isdir(full):
        raise ConfigError(f"'output_dir': '{path}' exists and is not a directory")
    existing = full
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConfigError(f"'output_dir': '{path}' cannot be created: '{existing}' is a file")
    try:  # a probe, not os.access: root passes every permission bit, yet a read-only mount refuses it
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        missing_input(f"'output_dir': '{path}' is not writable here ('{existing}': {exc.strerror or exc})")


def _validate_stages(config: RecipeConfig) -> None:
    names: dict[str, int] = {}
    for i, stage in enumerate(config.stages):
        key = f"stages.{i}"
        if stage.name in names:
            raise ConfigError(f"'{key}.name': two stages are named '{stage.name}' (stages.{names[stage.name]} too): give one a 'name'")
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_\-]*", stage.name):
            raise ConfigError(f"'{key}.name' is '{stage.name}': use letters, digits, '_' or '-' (it names an output folder)")
        names[stage.name] = i
        if not stage.enabled:
            continue
        ALGORITHMS.get(stage.algorithm).validate(stage, config, key)
        if stage.rewards is not None:
            _validate_rewards(stage.rewards, f"{key}.rewards")
        if needs_rewards(stage) and not (stage.rewards if stage.rewards is not None else config.rewards):
            raise ConfigError(f"'{key}' ({stage.algorithm}) needs rewards: list them under 'rewards' or '{key}.rewards'")


def _validate_rewards(specs: list[RewardSpec], key: str) -> None:
    if not specs:
        return
    from audiorl.rewards import RewardSet

    for j, spec in enumerate(specs):  # one by one, so that an error names its entry: rewards.1.kwargs
        try:
            RewardSet([spec])
        except Exception as exc:  # registry errors name the reward and the registered ones
            where = f"{key}.{j}.kwargs" if "(given in its kwargs)" in str(exc) else f"{key}.{j}"
            raise ConfigError(f"{where}: {exc}") from None
    try:
        RewardSet(specs)  # what only the whole list can break: two rewards logged under one name
    except Exception as exc:
        raise ConfigError(f"{key}: {exc}") from None


def stage_rewards(config: RecipeConfig, stage: Any) -> list[RewardSpec]:
    """The rewards a stage uses: its own list, else the recipe's."""
    if not stage_uses_rewards(stage):
        return []
    return list(stage.rewards if stage.rewards is not None else config.rewards)


# ------------------------------------------------------------------- listing
def _field_comments(cls: type) -> dict[str, str]:
    """``name: type = default  # comment`` lines of a dataclass's source: the comment is the key's documentation."""
    import inspect

    comments: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = inspect.getsource(klass).splitlines()
        except (OSError, TypeError):
            continue
        above: list[str] = []
        for line in lines:
            stripped = line.strip()
            if stripped.startswith("#"):
                above.append(stripped.lstrip("# "))
                continue
            match = re.match(r"(\w+)\s*:[^#]*?(?:#\s*(.*))?$", stripped)
            if match and not stripped.startswith(("def ", "class ", "@")):
                text = " ".join([*above, match.group(2) or ""]).strip()
                if text:
                    comments[match.group(1)] = text
            above = []
    return comments


def _default_text(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if value is MISSING or value == "???":
        return "(required)"
    return "null" if value is None else repr(value)


def list_keys() -> list[str]:
    """Every recipe key with its default and documentation: the recipe schema, each stage algorithm's, a reward entry's."""
    out: list[str] = []

    def walk(cls: type, prefix: str, skip: tuple[str, ...] = ()) -> None:
        comments = _field_comments(cls)
        for f in dataclasses.fields(cls):
            if f.name in skip:
                continue
            key = prefix + f.name
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
            if dataclasses.is_dataclass(default):
                walk(type(default), key + ".")
                continue
            out.append(f"{key:44s} {_default_text(f):18s} {comments.get(f.name, '')}".rstrip())

    walk(RecipeConfig, "", skip=("stages", "rewards"))
    walk(SynthConfig, "data.synthesize.")
    out.append("")
    out.append("rewards.N.* (and stages.N.rewards.N.*): one reward each (`audiorl rewards` lists the names)")
    walk(RewardSpec, "rewards.N.")
    for name in ALGORITHMS.names():
        out.append("")
        out.append(f"stages.N.* with algorithm: {name} (stages.<name>.key=value in overrides)")
        walk(ALGORITHMS.get(name).config, "stages.N.")
    return out
