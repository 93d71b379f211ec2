"""Training a Bradley-Terry reward model: ``audiorl train-rm RECIPE.yaml key=value ...``.

As in Step-Audio's RLHF stage, a sequence classifier with one output learns from preference pairs to
score the chosen completion above the rejected one (TRL's ``RewardTrainer``: loss
``-log sigmoid(r_chosen - r_rejected - margin)``). Its checkpoint is what the ``preference_model``
reward loads.

Reads top to bottom: typed recipe (validated before anything heavy loads) -> preference pairs from
a file (``prompt``/``chosen``/``rejected`` rows, or ``prompt``/``completion``/``rating`` rows turned
into pairs), checked row by row -> held-out split by prompt -> the base model (a sequence classifier,
or a causal LM that gets a fresh one-output head), LoRA optional -> accuracy before -> RewardTrainer
-> accuracy after -> ``OUTPUT/model`` (merged weights, tokenizer, ``audiorl_rm.json``: how the model
reads text) and ``OUTPUT/metrics.json``, each written to a temporary path and renamed into place.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any, Optional

from audiorl.common.errors import ConfigError, DataError, nearest
from audiorl.rl.config import LoraConfig
from omegaconf import MISSING, OmegaConf

log = logging.getLogger("audiorl")

DATA_SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")
# Qwen/Llama/Mistral projection names; set lora.target_modules for other architectures.
DEFAULT_LORA_TARGETS = r".*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)$"
RATING_RANGE = (1.0, 5.0)


# ------------------------------------------------------------------- schema
@dataclass
class RMModelConfig:
    path: str = MISSING  # HF checkpoint: a sequence classifier, or a causal LM (a one-output head is added)
    build_tiny: bool = False  # write audiorl's tiny random reward model to `path` first if it is not there
    tiny_seed: int = 0
    dtype: str = "float32"  # float32 | bfloat16 | float16
    device: str = "auto"  # auto (cuda if available) | cpu | cuda (the Trainer's GPU: pick one with CUDA_VISIBLE_DEVICES)


@dataclass
class RMLoraConfig(LoraConfig):
    """The RL recipe's LoRA block, off by default; ``target_modules`` null: attention and MLP projections.

    The score head is always trained in full (PEFT ``modules_to_save``)."""

    enabled: bool = False


@dataclass
class RMSynthConfig:
    kind: str = "ratings"  # ratings (prompt/completion/rating rows) | pairs (prompt/chosen/rejected rows)
    seed: int = 0
    n_prompts: int = 96


@dataclass
class RMDataConfig:
    train: str = MISSING  # .jsonl / .json / .parquet / .csv with prompt/chosen/rejected or prompt/completion/rating
    eval: Optional[str] = None  # held-out pairs; default: `eval_fraction` of train's prompts, held out
    eval_fraction: float = 0.1
    synthesize: Optional[RMSynthConfig] = None  # write the embedded preference set first if `train` is not there
    min_rating_gap: float = 1.0  # ratings rows: pair completions whose ratings differ by at least this
    use_margin: bool = False  # train with the rating difference (or a pairs file's `margin` column) as TRL's margin
    template: Optional[str] = None  # "chat" | a format string with {prompt} and {completion}; null: chat if the tokenizer has one
    max_pairs: Optional[int] = None  # keep at most this many training pairs (after the split)


@dataclass
class RMTrainConfig:
    epochs: float = 1.0
    max_steps: int = -1  # > 0 overrides epochs
    batch_size: int = 16  # pairs per device step
    gradient_accumulation_steps: int = 1
    learning_rate: float = 1.0e-4
    lr_scheduler: str = "linear"
    warmup_steps: int = 0
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    max_length: Optional[int] = 1024  # tokens; training pairs with a longer side are dropped (and counted)
    center_rewards_coefficient: Optional[float] = None  # e.g. 0.01 keeps rewards near mean zero
    logging_steps: int = 10
    eval_batch_size: int = 32


@dataclass
class RewardModelConfig:
    recipe: str = "reward_model"  # marks the recipe for `audiorl train-rm` / `audiorl validate`
    seed: int = 0
    output_dir: str = MISSING
    model: RMModelConfig = field(default_factory=RMModelConfig)
    lora: RMLoraConfig = field(default_factory=RMLoraConfig)
    data: RMDataConfig = field(default_factory=RMDataConfig)
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    threads: Optional[int] = None  # torch CPU threads (default: torch's choice)


CHOICES = {
    "recipe": ("reward_model",),
    "model.dtype": ("float32", "bfloat16", "float16"),
    "data.synthesize.kind": ("ratings", "pairs"),
    "train.lr_scheduler": ("constant", "linear", "cosine", "constant_with_warmup"),
}


def load_rm_config(path: str | None = None, overrides: list[str] | None = None) -> RewardModelConfig:
    """Merge the schema defaults, the YAML at ``path`` and ``key=value`` overrides; then validate."""
    from audiorl.rl.config import load_config

    config: RewardModelConfig = load_config(RewardModelConfig, path, overrides)
    validate_rm_config(config)
    return config


def rm_config_to_yaml(config: RewardModelConfig) -> str:
    return OmegaConf.to_yaml(OmegaConf.structured(config))


def validate_rm_config(config: RewardModelConfig) -> None:
    """Cross-field rules, choices and files. Raises ConfigError naming the key; loads no model."""
    from audiorl.rewards.preference import check_template
    from audiorl.rl.config import _get

    for key, choices in CHOICES.items():
        value = _get(config, key)
        if value is not None and value not in choices:
            raise ConfigError(f"'{key}' is '{value}'{nearest(str(value), choices)}; choose one of: {', '.join(choices)}")
    if config.model.device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"'model.device' is '{config.model.device}'; choose auto, cpu or cuda (select a GPU with CUDA_VISIBLE_DEVICES)"
        )
    t = config.train
    positive = {
        "train.batch_size": t.batch_size,
        "train.gradient_accumulation_steps": t.gradient_accumulation_steps,
        "train.eval_batch_size": t.eval_batch_size,
        "train.logging_steps": t.logging_steps,
        "train.learning_rate": t.learning_rate,
        "lora.r": config.lora.r,
        "data.min_rating_gap": config.data.min_rating_gap,
    }
    if t.max_length is not None:
        positive["train.max_length"] = t.max_length
    if t.max_steps <= 0:
        positive["train.epochs"] = t.epochs
    if config.data.max_pairs is not None:
        positive["data.max_pairs"] = config.data.max_pairs
    for key, value in positive.items():
        if value <= 0:
            raise ConfigError(f"'{key}' must be positive, got {value}")
    if not 0 <= config.data.eval_fraction < 1:
        raise ConfigError(f"'data.eval_fraction' must be in [0, 1), got {config.data.eval_fraction}")
    check_template(config.data.template, "'data.template'")
    synth = config.data.synthesize
    if synth is not None and synth.n_prompts < 2:
        raise ConfigError(f"'data.synthesize.n_prompts' must be at least 2, got {synth.n_prompts}")

    if not config.model.build_tiny:
        check_base_model(config.model.path, "'model.path'")
    for key in ("train", "eval"):
        path = getattr(config.data, key)
        if path is None:
            continue
        if not path.endswith(DATA_SUFFIXES):
            raise ConfigError(f"'data.{key}': '{path}' must be .jsonl, .json, .parquet or .csv")
        if not (synth is not None and key == "train") and not os.path.isfile(path):
            raise ConfigError(f"'data.{key}': '{path}' does not exist")


def check_base_model(path: str, where: str) -> None:
    """``path`` holds a checkpoint whose config AutoModelForSequenceClassification can build (reads config.json only)."""
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise ConfigError(
            f"{where}: '{path}' is not a Hugging Face model directory (no config.json); "
            "set model.build_tiny=true to build the tiny test reward model there"
        )
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    try:
        model_config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: '{path}' has an unreadable config.json: {exc}") from None
    if type(model_config) not in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING:
        raise ConfigError(
            f"{where}: '{path}' is a '{model_config.model_type}' model, which transformers cannot load as a sequence "
            "classifier (use a text LM or reward model checkpoint)"
        )


# --------------------------------------------------------------------- data
@dataclass
class PairReport:
    """What loading a preference file did (logged, and kept in metrics.json)."""

    source: str
    format: str  # pairs | ratings
    rows: int = 0
    prompts: int = 0
    pairs: int = 0
    prompts_without_pairs: int = 0  # ratings: prompts whose completions all tie (within min_rating_gap) or stand alone
    tied_pairs_dropped: int = 0  # ratings: completion pairs closer than min_rating_gap
    identical_pairs_dropped: int = 0  # chosen text == rejected text: nothing to learn


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def _text(row: dict, column: str, path: str, i: int, required: bool = True) -> str:
    value = row.get(column)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        what = "missing" if value is None else f"{type(value).__name__}, not text"
        raise DataError(f"{path} row {i}: column '{column}' is {what}")
    return value


def read_preferences(path: str, *, min_rating_gap: float = 1.0, use_margin: bool = False) -> tuple[list[dict], PairReport]:
    """Preference pairs ``{"prompt", "chosen", "rejected"[, "margin"], "_row"}`` from a data file.

    Either format: ``prompt``/``chosen``/``rejected`` rows (``prompt`` optional; with ``use_margin`` a
    ``margin`` column), or ``prompt``/``completion``/``rating`` rows (ratings 1-5): for each prompt, every
    two completions whose ratings differ by at least ``min_rating_gap`` make a pair, the higher rated
    chosen, with the rating difference as margin when ``use_margin``. Raises DataError naming the file
    and the row at fault, or the columns a file lacks; an empty result is an error.
    """
    from audiorl.data.dataset import read_rows

    rows = read_rows(path)
    if not rows:
        raise DataError(f"data file '{path}' has no rows")
    columns = list(rows[0])
    if {"chosen", "rejected"} <= set(columns):
        pairs, report = _pairs_rows(rows, path, use_margin)
    elif "rating" in columns or "completion" in columns:
        missing = [c for c in ("prompt", "completion", "rating") if c not in columns]
        if missing:
            raise DataError(f"data file '{path}' lacks column(s) {', '.join(missing)} (columns: {', '.join(columns)})")
        pairs, report = _rating_rows(rows, path, min_rating_gap, use_margin)
    else:
        raise DataError(
            f"data file '{path}' lacks the columns of a preference set: it needs prompt, chosen, rejected "
            f"or prompt, completion, rating (columns: {', '.join(columns)})"
        )
    if report.prompts_without_pairs:
        log.warning("%s: %d of %d prompts give no pair (ratings closer than %g, or a single completion)",
                    path, report.prompts_without_pairs, report.prompts, min_rating_gap)
    if report.identical_pairs_dropped:
        log.warning("%s: dropped %d pairs whose chosen and rejected texts are identical", path, report.identical_pairs_dropped)
    if not pairs:
        raise DataError(f"data file '{path}' gives no preference pair ({report.rows} rows, {report.prompts} prompts)")
    log.info("%s: %d preference pairs from %d rows (%s)", path, len(pairs), report.rows, report.format)
    return pairs, report


def _pairs_rows(rows: list[dict], path: str, use_margin: bool) -> tuple[list[dict], PairReport]:
    if use_margin and "margin" not in rows[0]:
        raise DataError(f"data file '{path}' has no 'margin' column, which data.use_margin=true needs for chosen/rejected rows")
    report = PairReport(source=path, format="pairs", rows=len(rows))
    pairs, prompts = [], set()
    for i, row in enumerate(rows):
        prompt = _text(row, "prompt", path, i, required=False)
        chosen, rejected = _text(row, "chosen", path, i), _text(row, "rejected", path, i)
        prompts.add(prompt)
        if chosen == rejected:
            report.identical_pairs_dropped += 1
            continue
        pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "_row": i}
        if use_margin:
            margin = _number(row.get("margin"))
            if margin is None or margin != margin:
                raise DataError(f"{path} row {i}: 'margin' is {row.get('margin')!r}, not a number")
            pair["margin"] = margin
        pairs.append(pair)
    report.prompts, report.pairs = len(prompts), len(pairs)
    return pairs, report


def _rating_rows(rows: list[dict], path: str, min_gap: float, use_margin: bool) -> tuple[list[dict], PairReport]:
    report = PairReport(source=path, format="ratings", rows=len(rows))
    groups: dict[str, list[tuple[int, str, float]]] = {}
    low, high = RATING_RANGE
    for i, row in enumerate(rows):
        prompt, completion = _text(row, "prompt", path, i), _text(row, "completion", path, i)
        rating = _number(row.get("rating"))
        if rating is None or rating != rating:
            raise DataError(f"{path} row {i}: 'rating' is {row.get('rating')!r}, not a number from {low:g} to {high:g}")
        if not low <= rating <= high:
            raise DataError(f"{path} row {i}: 'rating' is {rating:g}, outside {low:g}-{high:g}")
        groups.setdefault(prompt, []).append((i, completion, rating))
    pairs = []
    for prompt, items in groups.items():
        found = 0
        for (i, a, ra), (j, b, rb) in itertools.combinations(items, 2):
            if abs(ra - rb) < min_gap:
                report.tied_pairs_dropped += 1
                continue
            if a == b:
                report.identical_pairs_dropped += 1
                continue
            (chosen, rc, row_c), (rejected, rr, _) = sorted([(a, ra, i), (b, rb, j)], key=lambda x: -x[1])
            pair = {"prompt": prompt, "chosen": chosen, "rejected": rejected, "_row": row_c}
            if use_margin:
                pair["margin"] = rc - rr
            pairs.append(pair)
            found += 1
        report.prompts_without_pairs += found == 0
    report.prompts, report.pairs = len(groups), len(pairs)
    return pairs, report


def split_by_prompt(pairs: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, held-out): a ``fraction`` of the prompts is held out with all its pairs, so held-out prompts are unseen.

    With a single prompt (an implicit-prompt file) pairs are held out one by one instead.
    """
    if fraction <= 0:
        return list(pairs), []
    prompts = sorted({p["prompt"] for p in pairs})
    rng = random.Random(seed)
    if len(prompts) >= 2:
        rng.shuffle(prompts)
        n_eval = min(len(prompts) - 1, max(1, round(fraction * len(prompts))))
        held = set(prompts[:n_eval])
        return [p for p in pairs if p["prompt"] not in held], [p for p in pairs if p["prompt"] in held]
    order = list(range(len(pairs)))
    rng.shuffle(order)
    n_eval = min(len(pairs) - 1, max(1, round(fraction * len(pairs))))
    held_rows = set(order[:n_eval])
    return [p for k, p in enumerate(pairs) if k not in held_rows], [p for k, p in enumerate(pairs) if k in held_rows]


# ---------------------------------------------------------- embedded data
_THOUGHTS = [
    "I compare the pitch with a middle tone.",
    "The tone sounds low.",
    "I listen to the tone.",
    "The pitch is clear.",
]


def synthesize_preferences(path: str, kind: str = "ratings", n_prompts: int = 96, seed: int = 0) -> str:
    """Write the embedded preference set to ``path`` (.jsonl); returns it.

    Each prompt states a tone ("The tone is high."), with filler words around it; the preferred answer
    names that tone. ``pairs``: chosen and rejected differ only in the answer word (a model must read
    the prompt: a random one is right half the time). ``ratings``: four completions per prompt, right
    and tagged (5), right and bare (3), wrong and tagged (2), wrong and bare (1).
    """
    from audiorl.data.synth import ADJECTIVES, NOUNS, PLACES, VERBS

    if kind not in CHOICES["data.synthesize.kind"]:
        raise ConfigError(f"synthesize: kind '{kind}' is not one of {', '.join(CHOICES['data.synthesize.kind'])}")
    rng = random.Random(seed)
    labels = ["high", "low"] * (n_prompts // 2) + ["high"] * (n_prompts % 2)
    rng.shuffle(labels)
    rows = []
    for label in labels:
        other = "low" if label == "high" else "high"
        filler = f"The {rng.choice(ADJECTIVES)} {rng.choice(NOUNS)} {rng.choice(VERBS)} the {rng.choice(NOUNS)} {rng.choice(PLACES)}."
        parts = [filler, f"The tone is {label}.", "Is it high or low?"]
        if rng.random() < 0.5:
            parts[0], parts[1] = parts[1], parts[0]
        prompt = " ".join(parts)
        thought = rng.choice(_THOUGHTS)
        tagged = "<think>{}</think><answer>{}</answer>"
        if kind == "pairs":
            rows.append({"prompt": prompt, "chosen": tagged.format(thought, label), "rejected": tagged.format(thought, other)})
        else:
            for completion, rating in ((tagged.format(thought, label), 5), (label, 3), (tagged.format(thought, other), 2), (other, 1)):
                rows.append({"prompt": prompt, "completion": completion, "rating": rating})
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    os.replace(tmp, path)
    return os.path.abspath(path)


# ------------------------------------------------------------------- model
def load_base_model(path: str, dtype: str):
    """(model, tokenizer): ``path`` as a one-output sequence classifier (a causal LM gets a fresh score head)."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl.trainer.reward_trainer import suppress_seqcls_warning

    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    with suppress_seqcls_warning():
        model = AutoModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=getattr(torch, dtype), local_files_only=True, ignore_mismatched_sizes=True
        )
    if tokenizer.pad_token is None:  # TRL pads with EOS then; do it here so scoring before training agrees
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    return model, tokenizer


def score_head_name(model) -> str:
    for name in ("score", "classifier", "v_head"):
        if hasattr(model, name):
            return name
    raise ConfigError(f"{type(model).__name__} has no score head (score, classifier or v_head) to train with LoRA")


def peft_config_for(config: RewardModelConfig, model):
    from peft import LoraConfig, TaskType

    lora = config.lora
    return LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules or DEFAULT_LORA_TARGETS,
        modules_to_save=[score_head_name(model)],  # the head is new: train all of it
    )


# ----------------------------------------------------------------- training
def pairwise_accuracy(scorer, pairs: list[dict], template: str, batch_size: int) -> float | None:
    """Share of pairs whose chosen text outscores the rejected one (ties count half); None without pairs."""
    import numpy as np

    if not pairs:
        return None
    texts = [scorer.render(p["prompt"], p[side], template) for p in pairs for side in ("chosen", "rejected")]
    scores = scorer.score_ids(scorer.encode(texts), batch_size=batch_size).reshape(-1, 2)
    return float(np.mean(np.where(scores[:, 0] > scores[:, 1], 1.0, np.where(scores[:, 0] == scores[:, 1], 0.5, 0.0))))


def tokenize_pairs(scorer, pairs: list[dict], template: str, max_length: int | None, use_margin: bool) -> tuple[list[dict], int]:
    """TRL's processed preference format (``chosen_ids``, ``rejected_ids``[, ``margin``]), rendered as the reward renders."""
    chosen = scorer.encode([scorer.render(p["prompt"], p["chosen"], template) for p in pairs])
    rejected = scorer.encode([scorer.render(p["prompt"], p["rejected"], template) for p in pairs])
    out, dropped = [], 0
    for pair, c, r in zip(pairs, chosen, rejected):
        if max_length is not None and max(len(c), len(r)) > max_length:
            dropped += 1  # as TRL does: a truncated pair may have lost what tells them apart
            continue
        item = {"chosen_ids": c, "rejected_ids": r}
        if use_margin:
            item["margin"] = float(pair["margin"])
        out.append(item)
    return out, dropped


def prepare_rm_inputs(config: RewardModelConfig) -> None:
    """Build the tiny reward model and synthesise the embedded preference set where the recipe asks for them."""
    if config.model.build_tiny:
        from audiorl.common.io import build_checkpoint_once
        from audiorl.model.tiny_rm import build_tiny_reward_model

        build_checkpoint_once(
            config.model.path, lambda out: build_tiny_reward_model(out, seed=config.model.tiny_seed), "the tiny reward model"
        )
    synth = config.data.synthesize
    if synth is not None and not os.path.isfile(config.data.train):
        log.info("synthesising the embedded '%s' preference set at %s", synth.kind, config.data.train)
        synthesize_preferences(config.data.train, synth.kind, n_prompts=synth.n_prompts, seed=synth.seed)


def load_pair_splits(config: RewardModelConfig) -> tuple[list[dict], list[dict], dict[str, Any]]:
    """(train pairs, held-out pairs, report); every data error surfaces here, before any model loads."""
    d = config.data
    kwargs = dict(min_rating_gap=d.min_rating_gap, use_margin=d.use_margin)
    pairs, report = read_preferences(d.train, **kwargs)
    reports = {"train": dataclasses.asdict(report)}
    if d.eval:
        train_pairs = pairs
        eval_pairs, eval_report = read_preferences(d.eval, **kwargs)
        reports["eval"] = dataclasses.asdict(eval_report)
    else:
        train_pairs, eval_pairs = split_by_prompt(pairs, d.eval_fraction, config.seed)
    if d.max_pairs is not None:
        train_pairs = train_pairs[: d.max_pairs]
    if not train_pairs:
        raise DataError(f"data.train ({d.train}): no training pairs are left after holding out {d.eval_fraction:g} of the prompts")
    return train_pairs, eval_pairs, reports


def _write_json(path: str, payload: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(payload, f, indent=2)
    os.replace(tmp, path)


def train_reward_model(config: RewardModelConfig) -> dict[str, Any]:
    """Train the reward model the recipe describes; returns the metrics written to ``OUTPUT/metrics.json``."""
    import datasets
    import torch
    from audiorl.common.io import atomic_dir
    from audiorl.rewards.preference import META_FILE, PreferenceScorer
    from audiorl.rl.train import resolve_device, seed_everything
    from trl import RewardConfig, RewardTrainer

    started = time.perf_counter()
    validate_rm_config(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    prepare_rm_inputs(config)
    check_base_model(config.model.path, "'model.path'")
    train_pairs, eval_pairs, reports = load_pair_splits(config)
    log.info("reward model data: %d training pairs, %d held-out pairs", len(train_pairs), len(eval_pairs))

    device = resolve_device(config.model.device)
    seed_everything(config.seed)  # the fresh score head is drawn here
    model, tokenizer = load_base_model(config.model.path, config.model.dtype)
    model.to(device)
    scorer = PreferenceScorer(model, tokenizer, device)
    template = scorer.resolve_template(config.data.template)
    t = config.train
    train_items, dropped = tokenize_pairs(scorer, train_pairs, template, t.max_length, config.data.use_margin)
    if dropped:
        log.warning("dropped %d of %d training pairs longer than train.max_length=%d tokens", dropped, len(train_pairs), t.max_length)
    if not train_items:
        raise DataError(f"data.train ({config.data.train}): every pair is longer than train.max_length={t.max_length} tokens")

    before = pairwise_accuracy(scorer, eval_pairs, template, t.eval_batch_size)
    os.makedirs(config.output_dir, exist_ok=True)
    with open(os.path.join(config.output_dir, "recipe.yaml"), "w") as f:
        f.write(rm_config_to_yaml(config))
    args = RewardConfig(
        output_dir=os.path.join(config.output_dir, "trl_rm"),
        num_train_epochs=t.epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        max_length=None,  # filtered above, with a count
        center_rewards_coefficient=t.center_rewards_coefficient,
        logging_steps=t.logging_steps,
        use_cpu=device == "cpu",
        bf16=config.model.dtype == "bfloat16",  # RewardConfig's default (bf16 on) fails on CPU
        fp16=config.model.dtype == "float16",
        gradient_checkpointing=False,
        report_to=[],
        save_strategy="no",
        dataloader_num_workers=0,
        seed=config.seed,
        disable_tqdm=True,
    )
    trainer = RewardTrainer(
        model=model,
        args=args,
        train_dataset=datasets.Dataset.from_list(train_items),
        processing_class=tokenizer,
        peft_config=peft_config_for(config, model) if config.lora.enabled else None,
    )
    train_start = time.perf_counter()
    result = trainer.train()
    train_s = time.perf_counter() - train_start

    from peft import PeftModel

    trained = trainer.model
    if isinstance(trained, PeftModel):
        trained = trained.merge_and_unload()  # the head's trained copy replaces the original
    scorer.model = trained
    scorer.device = str(next(trained.parameters()).device)  # where the Trainer put it
    after = pairwise_accuracy(scorer, eval_pairs, template, t.eval_batch_size)
    log.info("held-out pairwise accuracy: %s before, %s after (%d pairs)",
             "n/a" if before is None else f"{before:.3f}", "n/a" if after is None else f"{after:.3f}", len(eval_pairs))

    out = os.path.abspath(config.output_dir)
    metrics = {
        "eval_pairwise_accuracy_before": before,
        "eval_pairwise_accuracy_after": after,
        "eval_pairs": len(eval_pairs),
        "train_pairs": len(train_items),
        "train_pairs_dropped_too_long": dropped,
        "train_loss": float(result.training_loss),
        "steps": int(trainer.state.global_step),
        "data": reports,
        "template": template,
        "lora": config.lora.enabled,
        "timings": {"train_s": train_s},
        "model": os.path.join(out, "model"),
    }
    with atomic_dir(metrics["model"]) as tmp:
        trained.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # How the model reads text, so the preference_model reward renders exactly as training did.
        meta = {"template": template, "max_length": t.max_length, "base_model": os.path.abspath(config.model.path)}
        _write_json(os.path.join(tmp, META_FILE), meta)
        _write_json(os.path.join(tmp, "metrics.json"), metrics)
    metrics["timings"]["total_s"] = time.perf_counter() - started
    _write_json(os.path.join(out, "metrics.json"), metrics)
    print(f"\nheld-out pairwise accuracy: {before} before -> {after} after ({len(eval_pairs)} pairs)")
    print(f"reward model in {metrics['model']}; metrics in {os.path.join(out, 'metrics.json')}")
    return metrics
