"""The one training entry point: ``audiorl train RECIPE.yaml key=value ...``.

Reads top to bottom: prepare inputs (tiny model / embedded data when asked) -> load data and check
it against the rewards (before any model loads) -> load the audio LLM -> optional SFT warm start ->
held-out evaluation -> GRPO -> evaluation -> adapter, merged checkpoint, metrics, plot, table.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError
from audiorl.rl.config import RecipeConfig, to_yaml

log = logging.getLogger("audiorl")


@dataclass
class Session:
    """Everything the stages share."""

    config: RecipeConfig
    device: str
    lm: Any
    store: Any
    embedder: Any
    prompts: Any
    engine: Any
    rewards: Any
    train_rows: list[dict]
    eval_rows: list[dict]
    metrics: Any
    timings: dict[str, float] = field(default_factory=dict)
    base_dir: str = ""  # the checkpoint the current LoRA adapter is trained on


def seed_everything(seed: int) -> None:
    import torch
    from transformers import set_seed

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    set_seed(seed)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"'model.device' is '{name}' but no CUDA device is available")
    return name


# ------------------------------------------------------------------- preparing
def prepare_inputs(config: RecipeConfig) -> None:
    """Build the tiny model and synthesise the embedded data set where the recipe asks for them."""
    if config.model.build_tiny:
        from audiorl.common.io import build_checkpoint_once
        from audiorl.model.tiny import build_tiny_qwen2_audio

        build_checkpoint_once(
            config.model.path, lambda out: build_tiny_qwen2_audio(out, seed=config.model.tiny_seed), "the tiny Qwen2-Audio"
        )
    synth = config.data.synthesize
    if synth is not None and not os.path.isfile(config.data.train):
        from audiorl.data.synth import make_dataset

        out_dir = os.path.dirname(os.path.abspath(config.data.train))
        log.info("synthesising the embedded '%s' data set in %s", synth.task, out_dir)
        paths = make_dataset(out_dir, synth.task, seed=synth.seed, n_train=synth.n_train, n_eval=synth.n_eval)
        expected = {"train": config.data.train, "eval": config.data.eval}
        for split, path in expected.items():
            if path is not None and os.path.abspath(path) != os.path.abspath(paths[split]):
                raise ConfigError(f"'data.{split}' must be '{paths[split]}' when data.synthesize is set")


def load_rows(config: RecipeConfig) -> tuple[list[dict], list[dict]]:
    from audiorl.data.dataset import load_examples

    d = config.data
    common = dict(audio_column=d.audio_column, prompt_column=d.prompt_column, system_prompt=d.system_prompt, on_bad_audio=d.on_bad_audio)
    train_rows = load_examples(d.train, max_samples=d.max_train_samples, **common)
    eval_rows = load_examples(d.eval, max_samples=d.max_eval_samples, **common) if d.eval else []
    return train_rows, eval_rows


def open_session(config: RecipeConfig) -> Session:
    from audiorl.data.audio import AudioStore
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rewards import RewardSet
    from audiorl.rl.metrics import MetricsLog
    from audiorl.rl.prompts import PromptEncoder
    from audiorl.rollouts import build_rollout_engine

    prepare_inputs(config)
    rewards = RewardSet(config.rewards)
    train_rows, eval_rows = load_rows(config)
    rewards.check_columns(list(train_rows[0]), f"data.train ({config.data.train})")
    if eval_rows:
        rewards.check_columns(list(eval_rows[0]), f"data.eval ({config.data.eval})")

    device = resolve_device(config.model.device)
    lm = load_audio_lm(config.model.path, dtype=config.model.dtype, device=device)
    encoder = lm.audio_encoder()
    encoder.requires_grad_(not config.model.freeze_audio_encoder)
    store = AudioStore()
    rewards.audio_store = store  # rewards that take waveforms read the clips the trainer already decoded
    embedder = AudioEmbedder(lm, store, cache_bytes=config.model.audio_cache_mb << 20)
    prompts = PromptEncoder(lm, store)
    engine = build_rollout_engine(config.rollout.backend, lm, embedder, config.rollout, seed=config.seed)
    os.makedirs(config.output_dir, exist_ok=True)
    return Session(
        config=config, device=device, lm=lm, store=store, embedder=embedder, prompts=prompts, engine=engine,
        rewards=rewards, train_rows=train_rows, eval_rows=eval_rows, metrics=MetricsLog(config.output_dir),
        base_dir=os.path.abspath(config.model.path),
    )


def apply_lora(s: Session) -> None:
    """Wrap the policy in a fresh PEFT LoRA adapter on the language model (the encoder stays as configured)."""
    from peft import LoraConfig, get_peft_model

    cfg = s.config
    if not cfg.lora.enabled:
        return
    modules_to_save = []
    if cfg.model.train_projector:
        modules_to_save.append(s.lm.projector_module)
    if not cfg.model.freeze_audio_encoder:
        modules_to_save.append(s.lm.encoder_module)
    peft_config = LoraConfig(
        r=cfg.lora.r,
        lora_alpha=cfg.lora.alpha,
        lora_dropout=cfg.lora.dropout,
        target_modules=cfg.lora.target_modules or s.lm.lora_target_regex,
        modules_to_save=modules_to_save or None,
    )
    s.lm.model = get_peft_model(s.lm.model, peft_config)
    s.lm.model.peft_config["default"].base_model_name_or_path = s.base_dir


def merge_lora(s: Session) -> None:
    from peft import PeftModel

    if isinstance(s.lm.model, PeftModel):
        s.lm.model = s.lm.model.merge_and_unload()
    s.lm.audio_encoder().requires_grad_(not s.config.model.freeze_audio_encoder)


def trainer_precision(s: Session) -> dict[str, Any]:
    return {
        "use_cpu": s.device == "cpu",
        "bf16": s.config.model.dtype == "bfloat16",
        "fp16": s.config.model.dtype == "float16",
        "report_to": [],
        "save_strategy": "no",
        "gradient_checkpointing": False,
        "remove_unused_columns": False,
        "dataloader_num_workers": 0,
        "seed": s.config.seed,
        "disable_tqdm": True,
    }


# ---------------------------------------------------------------------- stages
def sft_rows(s: Session) -> list[dict]:
    cfg = s.config.sft
    rows = s.train_rows[: cfg.max_samples] if cfg.max_samples else list(s.train_rows)
    labels = [row.get("label") for row in rows]
    if cfg.shuffle_labels:
        random.Random(s.config.seed).shuffle(labels)
    out = []
    for row, label in zip(rows, labels):
        values = {**row, "label": label}
        try:
            completion = cfg.completion_template.format(**values)
        except KeyError as exc:
            raise ConfigError(f"'sft.completion_template' names column {exc} which {row['_source']} row {row['_row']} lacks") from None
        out.append({"prompt": row["prompt"], "completion": completion, "_row": row["_row"]})
    return out


def build_sft_trainer(s: Session):
    import datasets
    from audiorl.rl.metrics import TrainerMetrics
    from audiorl.rl.sft import AudioSFTCollator, AudioSFTTrainer
    from trl import SFTConfig

    cfg = s.config.sft
    seed_everything(s.config.seed)
    apply_lora(s)
    args = SFTConfig(
        output_dir=os.path.join(s.config.output_dir, "trl_sft"),
        num_train_epochs=cfg.epochs,
        per_device_train_batch_size=cfg.batch_size,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type="constant",
        logging_steps=cfg.logging_steps,
        max_length=None,
        dataset_kwargs={"skip_prepare_dataset": True},
        **trainer_precision(s),
    )
    return AudioSFTTrainer(
        embedder=s.embedder,
        model=s.lm.model,
        args=args,
        train_dataset=datasets.Dataset.from_list(sft_rows(s)),
        processing_class=s.lm.tokenizer,
        data_collator=AudioSFTCollator(s.prompts),
        callbacks=[TrainerMetrics(s.metrics, "sft")],
    )


def run_sft(s: Session) -> None:
    from audiorl.common.io import atomic_dir

    trainer = build_sft_trainer(s)
    start = time.perf_counter()
    trainer.train()
    s.timings["sft_s"] = time.perf_counter() - start
    merge_lora(s)
    # RL starts from the SFT model: save it, so the RL adapter has a base to load onto.
    s.base_dir = os.path.join(os.path.abspath(s.config.output_dir), "sft_model")
    with atomic_dir(s.base_dir) as tmp:
        s.lm.save_pretrained(s.lm.model, tmp)


def run_eval(s: Session, step: int, name: str) -> dict[str, float]:
    from audiorl.rl.evaluate import evaluate

    if not s.eval_rows:
        return {}
    start = time.perf_counter()
    s.engine.resume()
    try:
        s.engine.update_weights(s.lm.model)
        results = evaluate(
            s.eval_rows, s.prompts, s.engine, s.rewards,
            max_new_tokens=s.config.eval.max_new_tokens or s.config.rollout.max_new_tokens,
            samples_path=os.path.join(s.config.output_dir, f"eval_samples_{name}.jsonl"),
        )
    finally:
        s.engine.release()
    s.timings["eval_s"] = s.timings.get("eval_s", 0.0) + time.perf_counter() - start
    s.metrics.log(step, "eval", results)
    log.info("eval at step %d: %s", step, ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
    return results


def build_grpo_trainer(s: Session):
    import datasets
    from audiorl.rl.grpo import AudioGRPOTrainer
    from audiorl.rl.metrics import TrainerMetrics
    from audiorl.rollouts import SamplingParams
    from transformers import TrainerCallback
    from trl import GRPOConfig

    cfg, rollout = s.config.grpo, s.config.rollout
    seed_everything(s.config.seed)
    apply_lora(s)
    completions = cfg.prompts_per_step * cfg.num_generations
    args = GRPOConfig(
        output_dir=os.path.join(s.config.output_dir, "trl_grpo"),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=completions // cfg.micro_batch_size,
        num_generations=cfg.num_generations,
        max_completion_length=rollout.max_new_tokens,
        temperature=rollout.temperature,
        top_p=rollout.top_p,
        top_k=rollout.top_k,
        learning_rate=cfg.learning_rate,
        lr_scheduler_type=cfg.lr_scheduler,
        warmup_steps=cfg.warmup_steps,
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.max_grad_norm,
        beta=cfg.beta,
        epsilon=cfg.epsilon,
        num_iterations=cfg.num_iterations,
        loss_type=cfg.loss_type,
        logging_steps=cfg.logging_steps,
        log_completions=False,
        **trainer_precision(s),
    )

    class PeriodicEval(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            every = s.config.eval.every_steps
            if every and state.global_step % every == 0 and state.global_step < cfg.max_steps:
                run_eval(s, state.global_step, f"step{state.global_step}")

    return AudioGRPOTrainer(
        lm=s.lm,
        embedder=s.embedder,
        prompts=s.prompts,
        engine=s.engine,
        rewards=s.rewards,
        sampling=SamplingParams(rollout.max_new_tokens, rollout.temperature, rollout.top_p, rollout.top_k),
        advantage=cfg.advantage,
        args=args,
        train_dataset=datasets.Dataset.from_list(s.train_rows),
        callbacks=[TrainerMetrics(s.metrics, "grpo"), PeriodicEval()],
    )


def run_grpo(s: Session) -> None:
    trainer = build_grpo_trainer(s)
    start = time.perf_counter()
    trainer.train()
    s.timings["grpo_s"] = time.perf_counter() - start


# --------------------------------------------------------------------- outputs
def save_outputs(s: Session) -> dict[str, str]:
    from audiorl.common.io import atomic_dir
    from peft import PeftModel

    out = os.path.abspath(s.config.output_dir)
    paths = {}
    if isinstance(s.lm.model, PeftModel):
        paths["adapter"] = os.path.join(out, "adapter")
        with atomic_dir(paths["adapter"]) as tmp:
            # only the trained adapter: TRL adds a frozen "ref" copy when beta > 0
            s.lm.model.save_pretrained(tmp, selected_adapters=["default"])
        merge_lora(s)
    paths["merged"] = os.path.join(out, "merged")
    with atomic_dir(paths["merged"]) as tmp:
        s.lm.save_pretrained(s.lm.model, tmp)
    return paths


def _sampled_reward_window(s: Session, last: bool, n: int = 10) -> float:
    values = [v for _, v in s.metrics.series("grpo", "reward")]
    window = values[-n:] if last else values[:n]
    return float(np.mean(window)) if window else float("nan")


def train(config: RecipeConfig) -> dict[str, Any]:
    import torch
    from audiorl.rl.metrics import before_after_table, plot_rewards

    started = time.perf_counter()
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    s = open_session(config)
    with open(os.path.join(config.output_dir, "recipe.yaml"), "w") as f:
        f.write(to_yaml(config))

    try:
        if config.sft.enabled:
            run_sft(s)
        before = run_eval(s, 0, "before")
        if config.grpo.enabled:
            run_grpo(s)
        after = run_eval(s, config.grpo.max_steps if config.grpo.enabled else 0, "after")
    finally:
        s.engine.close()
        s.rewards.close()
    paths = save_outputs(s)

    accuracy_key = next((k for k in before if "accuracy" in k), next(iter(before), None))
    paths["plot"] = plot_rewards(s.metrics, os.path.join(config.output_dir, "reward_curve.png"), accuracy_key)
    s.timings["total_s"] = time.perf_counter() - started
    first, last = _sampled_reward_window(s, last=False), _sampled_reward_window(s, last=True)
    table = before_after_table(before, after, {"sampled reward (first/last 10 steps)": (first, last)} if config.grpo.enabled else None)
    summary = {
        "before": before,
        "after": after,
        "sampled_reward_first10": first,
        "sampled_reward_last10": last,
        "timings": s.timings,
        "audio_encoder": dict(s.embedder.stats),
        "rollout_engine": type(s.engine).__name__,
        "outputs": paths,
    }
    with open(os.path.join(config.output_dir, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print("\n" + table)
    print(f"\ntotal {s.timings['total_s']:.0f} s; outputs in {os.path.abspath(config.output_dir)}")
    return summary
