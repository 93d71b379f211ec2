"""The one training entry point: ``audiorl train RECIPE.yaml key=value ...``.

``RLRecipe`` follows torchtune's recipe protocol and reads top to bottom:

* ``setup``: build the tiny model / embedded data where asked, read and check every data row
  against the rewards (before any model loads), load the audio LLM, the audio path (store,
  embedder, the one audio-aware forward), the rollout engine and the accelerator;
* ``train``: held-out evaluation, then each stage of ``stages:`` in order, each from the previous
  one's weights (a LoRA adapter is merged and the merged weights saved as ``<stage>_model/``
  before the next stage); evaluations between and after;
* ``save_checkpoint``: the final ``adapter/`` (if LoRA) and ``merged/`` checkpoint, metrics,
  plot, summary; ``load_checkpoint`` is the seam for exact resume (a later issue);
* ``cleanup``: engines and reward workers.
"""

from __future__ import annotations

import json
import logging
import os
import random
import time
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError
from audiorl.rl.config import RecipeConfig, stage_rewards, to_yaml

log = logging.getLogger("audiorl")


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
        from audiorl.model.tiny import build_tiny

        family, seed = config.model.tiny_family, config.model.tiny_seed
        build_checkpoint_once(config.model.path, lambda out: build_tiny(out, family, seed=seed), f"the tiny {family}")
    synth = config.data.synthesize
    if synth is not None:
        from audiorl.data.synth import make_dataset, synthesis_incomplete

        out_dir = os.path.dirname(os.path.abspath(config.data.train))
        wanted = [config.data.train, config.data.eval] + [
            s.pairs for s in config.stages if getattr(s, "source", None) == "offline" and synth.pairs_template
        ]
        if synthesis_incomplete(out_dir) is None and all(p is None or os.path.isfile(p) for p in wanted):
            return
        if os.path.isfile(config.data.train):  # killed while writing, or a split missing: written again
            log.warning("the data set in %s is incomplete (an interrupted synthesis): writing it again", out_dir)
        log.info("synthesising the embedded '%s' data set in %s", synth.task, out_dir)
        paths = make_dataset(
            out_dir, synth.task, seed=synth.seed, n_train=synth.n_train, n_eval=synth.n_eval, pairs_template=synth.pairs_template,
            speech_tasks=synth.speech_tasks,
        )
        expected = {"data.train": (config.data.train, paths["train"]), "data.eval": (config.data.eval, paths["eval"])}
        for i, stage in enumerate(config.stages):
            if getattr(stage, "source", None) == "offline" and "pairs" in paths:
                expected[f"stages.{i}.pairs"] = (stage.pairs, paths["pairs"])
        for key, (path, written) in expected.items():
            if path is not None and os.path.abspath(path) != os.path.abspath(written):
                raise ConfigError(f"'{key}' must be '{written}' when data.synthesize is set")


def run_inputs(config: RecipeConfig) -> list[str]:
    """What a run reads (never removed by ``overwrite``, even inside output_dir)."""
    return [config.model.path, config.data.train, config.data.eval, *(getattr(s, "pairs", None) for s in config.stages)]


def load_rows(config: RecipeConfig) -> tuple[list[dict], list[dict]]:
    from audiorl.data.dataset import load_examples, model_window_seconds

    d = config.data
    common = dict(
        audio_column=d.audio_column, prompt_column=d.prompt_column, system_prompt=d.system_prompt, on_bad_audio=d.on_bad_audio,
        max_audio_seconds=model_window_seconds(config.model.path),  # a longer clip is a bad row now, not at step N
    )
    train_rows = load_examples(d.train, max_samples=d.max_train_samples, **common)
    eval_rows = load_examples(d.eval, max_samples=d.max_eval_samples, **common) if d.eval else []
    return train_rows, eval_rows


def load_stage_pairs(config: RecipeConfig) -> dict[str, list[dict]]:
    """The preference pairs of each enabled offline DPO stage, read and checked like the data rows (before load)."""
    from audiorl.data.dataset import model_window_seconds
    from audiorl.data.preferences import load_pairs

    d = config.data
    pairs = {}
    for stage in config.enabled_stages():
        if getattr(stage, "source", None) == "offline":
            pairs[stage.name] = load_pairs(
                stage.pairs, chosen_column=stage.chosen_column, rejected_column=stage.rejected_column, audio_column=d.audio_column,
                prompt_column=d.prompt_column, system_prompt=d.system_prompt, on_bad_audio=d.on_bad_audio,
                max_audio_seconds=model_window_seconds(config.model.path),
            )
    return pairs


def _spec_key(specs: list[Any]) -> str:
    return json.dumps([{k: getattr(s, k) for k in vars(s)} for s in specs], sort_keys=True, default=str)


class RLRecipe:
    """One run of a recipe: the state every stage shares, and the steps between stages."""

    def __init__(self, config: RecipeConfig):
        self.config = config
        self.timings: dict[str, float] = {}
        self.global_step = 0
        self.policy_version = 0  # bumped whenever the policy's weights change (optimizer step, merge)
        self._engine_holds: tuple[int, int] | None = None  # (model object, weights version) the rollout engine has
        self.evals: dict[str, dict[str, float]] = {}
        self.stage_spans: list[tuple[str, int, int]] = []  # (stage, first global step, last)
        self._reward_sets: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup
    def setup(self) -> None:
        import torch
        from accelerate import Accelerator
        from audiorl.data.audio import AudioStore
        from audiorl.model import load_audio_lm
        from audiorl.model.base import family_class
        from audiorl.model.audio_embed import AudioEmbedder
        from audiorl.model.forward import AudioForward
        from audiorl.rl.metrics import MetricsLog
        from audiorl.rl.prompts import PromptEncoder
        from audiorl.rollouts import build_rollout_engine

        from audiorl.rl import run_dir

        cfg = self.config
        self.started = time.perf_counter()
        self.run_id = run_dir.claim(cfg.output_dir, cfg.overwrite, keep=run_inputs(cfg))  # before anything loads
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        self.seed_everything()
        prepare_inputs(cfg)
        self.train_rows, self.eval_rows = load_rows(cfg)
        self.stage_pairs = load_stage_pairs(cfg)  # offline DPO's pairs: checked before the model loads too
        # rewards that take waveforms read the clips the trainer decodes; multi-channel files become mono as the family's release does
        self.store = AudioStore(channels=family_class(cfg.model.path).audio_channels)
        for stage in cfg.enabled_stages():  # reward columns are checked before the model loads
            rewards = self.reward_set(stage)
            if rewards is not None:
                rewards.check_columns(list(self.train_rows[0]), f"data.train ({cfg.data.train})")
                if self.eval_rows:
                    rewards.check_columns(list(self.eval_rows[0]), f"data.eval ({cfg.data.eval})")
        # held-out evaluation scores with the recipe's rewards, else those of the last stage that has some
        self.eval_rewards = self.reward_set(None) or next(
            (r for r in (self.reward_set(s) for s in reversed(cfg.enabled_stages())) if r is not None), None
        )
        self.device = resolve_device(cfg.model.device)
        precision = {"bfloat16": "bf16", "float16": "fp16"}.get(cfg.model.dtype, "no")
        self.accelerator = Accelerator(cpu=self.device == "cpu", mixed_precision=precision)
        self.lm = load_audio_lm(cfg.model.path, dtype=cfg.model.dtype, device=self.device)
        self.lm.think = cfg.model.think
        if cfg.model.speech_output and self.lm.audio_output_token_range is None:
            raise ConfigError(f"model.speech_output: the {self.lm.family} model at '{cfg.model.path}' has no speech-code tokens")
        self.lm.speech_output = cfg.model.speech_output
        self.lm.audio_encoder().requires_grad_(not cfg.model.freeze_audio_encoder)
        self.embedder = AudioEmbedder(self.lm, self.store, cache_bytes=cfg.model.audio_cache_mb << 20)
        self.forward = AudioForward(self.lm, self.embedder, autocast=self.accelerator.autocast)
        self.prompts = PromptEncoder(self.lm, self.store)
        self.engine = build_rollout_engine(cfg.rollout.backend, self.lm, self.embedder, cfg.rollout, seed=cfg.seed)
        os.makedirs(cfg.output_dir, exist_ok=True)
        self.metrics = MetricsLog(cfg.output_dir)
        self.base_dir = os.path.abspath(cfg.model.path)  # the checkpoint the current LoRA adapter is trained on
        with open(os.path.join(cfg.output_dir, "recipe.yaml"), "w") as f:
            f.write(f"# run_id: {self.run_id} (audiorl train; run.json and summary.json carry the same id)\n")
            f.write(to_yaml(cfg))

    def seed_everything(self) -> None:
        seed_everything(self.config.seed)

    def reward_set(self, stage: Any):
        """The stage's ``RewardSet`` (the recipe's when ``stage`` is None), built once per distinct list."""
        from audiorl.rewards import RewardSet

        specs = list(self.config.rewards) if stage is None else stage_rewards(self.config, stage)
        if not specs:
            return None
        key = _spec_key(specs)
        if key not in self._reward_sets:
            self._reward_sets[key] = RewardSet(specs, audio_store=self.store)
        return self._reward_sets[key]

    # ------------------------------------------------------------- the policy
    def lora_config(self, with_modules_to_save: bool = True):
        """The recipe's PEFT LoRA config: the language model's projections (and the trained audio modules)."""
        from peft import LoraConfig

        cfg = self.config
        modules_to_save = []
        if with_modules_to_save and cfg.model.train_projector:
            modules_to_save.append(self.lm.projector_module)
        if with_modules_to_save and not cfg.model.freeze_audio_encoder:
            modules_to_save.append(self.lm.encoder_module)
        return LoraConfig(
            r=cfg.lora.r,
            lora_alpha=cfg.lora.alpha,
            lora_dropout=cfg.lora.dropout,
            target_modules=cfg.lora.target_modules or self.lm.lora_target_regex,
            target_parameters=cfg.lora.target_parameters,
            exclude_modules=self.lm.lora_exclude_regex,
            modules_to_save=modules_to_save or None,
        )

    def apply_lora(self) -> None:
        """Wrap the policy in a fresh PEFT LoRA adapter on the language model (the encoder stays as configured)."""
        from peft import get_peft_model

        if not self.config.lora.enabled:
            return
        self.lm.model = get_peft_model(self.lm.model, self.lora_config())
        self.lm.model.peft_config["default"].base_model_name_or_path = self.base_dir
        self.weights_changed()

    def merge_lora(self) -> None:
        from peft import PeftModel

        if isinstance(self.lm.model, PeftModel):
            self.lm.model = self.lm.model.merge_and_unload()
        self.lm.audio_encoder().requires_grad_(not self.config.model.freeze_audio_encoder)
        self.weights_changed()

    def sync_engine(self) -> None:
        """Give the rollout engine the policy's weights unless it holds them already (call inside resume/release)."""
        key = (id(self.lm.model), self.policy_version)
        if self._engine_holds != key:
            self.engine.update_weights(self.lm.model)
            self._engine_holds = key

    def weights_changed(self) -> None:
        """The policy's weights changed: the engine needs them, the encoder cache must not serve the old ones."""
        self.policy_version += 1
        self.embedder.weights_changed("policy")

    def build_optimizer(self, parameters, opt: Any, total_steps: int, only_trainable: bool = True):
        """AdamW over the parameters (those that require grad), the scheduler, and those parameters (for clipping)."""
        import torch
        from transformers import get_scheduler

        params = [p for p in parameters if p.requires_grad or not only_trainable]
        if not params:
            raise ConfigError("nothing to train: no parameter requires grad (check lora / model.freeze_audio_encoder)")
        decay = [p for p in params if p.dim() >= 2]
        no_decay = [p for p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": opt.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        optimizer = torch.optim.AdamW(groups, lr=opt.learning_rate, betas=(opt.adam_beta1, opt.adam_beta2), eps=1e-8)
        scheduler = get_scheduler(opt.lr_scheduler, optimizer, num_warmup_steps=opt.warmup_steps, num_training_steps=total_steps)
        return self.accelerator.prepare_optimizer(optimizer), self.accelerator.prepare_scheduler(scheduler), params

    def optimizer_step(self, optimizer, scheduler, params, max_grad_norm: float) -> float:
        import torch

        if max_grad_norm > 0:
            norm = self.accelerator.clip_grad_norm_(params, max_grad_norm)
        else:
            grads = [p.grad.detach().norm() for p in params if p.grad is not None]
            norm = torch.stack(grads).norm() if grads else torch.zeros(())
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        return float(norm)

    def run_steps(self, stage: Any, step: Any) -> None:
        """A stage's ``max_steps`` iterations of ``step(i) -> metrics``: logged, evaluated every ``eval.every_steps``, timed."""
        start = time.perf_counter()
        every = self.config.eval.every_steps
        for i in range(stage.max_steps):
            metrics = step(i)
            self.global_step += 1
            if (i + 1) % stage.logging_steps == 0 or i + 1 == stage.max_steps:
                self.log(self.global_step, stage.name, metrics)
            if every and (i + 1) % every == 0 and i + 1 < stage.max_steps:
                self.evaluate(self.global_step, f"{stage.name}_step{i + 1}")
        self.timings[f"{stage.name}_s"] = time.perf_counter() - start

    # --------------------------------------------------------------- logging
    def log(self, step: int, stage: str, values: dict[str, Any]) -> None:
        self.metrics.log(step, stage, values)

    def evaluate(self, step: int, name: str) -> dict[str, float]:
        """Held-out greedy evaluation with the recipe's rewards; logged as stage ``eval``."""
        from audiorl.rl.evaluate import evaluate

        if not self.eval_rows or self.eval_rewards is None:
            return {}
        start = time.perf_counter()
        self.engine.resume()
        try:
            self.sync_engine()
            results = evaluate(
                self.eval_rows, self.prompts, self.engine, self.eval_rewards,
                max_new_tokens=self.config.eval.max_new_tokens or self.config.rollout.max_new_tokens,
                samples_path=os.path.join(self.config.output_dir, f"eval_samples_{name}.jsonl"),
            )
        finally:
            self.engine.release()
        self.timings["eval_s"] = self.timings.get("eval_s", 0.0) + time.perf_counter() - start
        self.metrics.log(step, "eval", results)
        self.evals[name] = results
        log.info("eval at step %d (%s): %s", step, name, ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
        return results

    # ----------------------------------------------------------------- train
    def train(self) -> None:
        from audiorl.common.registry import import_object
        from audiorl.rl.stage_config import ALGORITHMS

        stages = self.config.enabled_stages()
        before_done = False
        for i, stage in enumerate(stages):
            learns_from_rewards = stage.algorithm != "sft"
            if learns_from_rewards and not before_done:
                self.evaluate(self.global_step, "before")
                before_done = True
            log.info("stage %d/%d: %s (%s)", i + 1, len(stages), stage.name, stage.algorithm)
            first = self.global_step + 1
            runner = import_object(ALGORITHMS.get(stage.algorithm).runner)(self, stage)
            runner.run()
            self.stage_spans.append((stage.name, first, self.global_step))
            self.embedder.reset_roles()
            if i + 1 < len(stages):
                self.finish_stage(stage)
                if learns_from_rewards:
                    self.evaluate(self.global_step, f"after_{stage.name}")
        if not before_done:
            self.evaluate(self.global_step, "before")
        self.evaluate(self.global_step, "after")

    def finish_stage(self, stage: Any) -> None:
        """Merge the stage's adapter and save its weights: the next stage starts (and its adapter sits) on them."""
        from audiorl.common.io import atomic_dir

        from audiorl.rl import run_dir

        self.merge_lora()
        run_dir.update(self.config.output_dir, stage_dirs=f"{stage.name}_model")  # an output of this run (overwrite removes it)
        self.base_dir = os.path.join(os.path.abspath(self.config.output_dir), f"{stage.name}_model")
        with atomic_dir(self.base_dir) as tmp:
            self.lm.save_pretrained(self.lm.model, tmp)

    # ------------------------------------------------------------ checkpoint
    def save_checkpoint(self) -> dict[str, str]:
        """The final weights: ``adapter/`` (LoRA only, on ``base_dir``) and ``merged/`` (hub layout)."""
        from audiorl.common.io import atomic_dir
        from peft import PeftModel

        out = os.path.abspath(self.config.output_dir)
        paths = {}
        if isinstance(self.lm.model, PeftModel):
            paths["adapter"] = os.path.join(out, "adapter")
            with atomic_dir(paths["adapter"]) as tmp:
                self.lm.model.save_pretrained(tmp, selected_adapters=["default"])
            self.merge_lora()
        paths["merged"] = os.path.join(out, "merged")
        with atomic_dir(paths["merged"]) as tmp:
            self.lm.save_pretrained(self.lm.model, tmp)
        return paths

    def load_checkpoint(self, path: str) -> None:
        """Exact resume (optimizer, scheduler, RNG, sampler and engine state) is not implemented yet."""
        raise NotImplementedError("resuming a run from a checkpoint is not supported yet")

    def cleanup(self) -> None:
        engine = getattr(self, "engine", None)
        if engine is not None:
            engine.close()
        for rewards in self._reward_sets.values():
            rewards.close()

    # --------------------------------------------------------------- report
    def sampled_reward_window(self, stage: str, last: bool, n: int = 10) -> float:
        values = [v for _, v in self.metrics.series(stage, "reward")]
        window = values[-n:] if last else values[:n]
        return float(np.mean(window)) if window else float("nan")

    def report(self, paths: dict[str, str]) -> dict[str, Any]:
        from audiorl.rl.metrics import before_after_table, plot_rewards

        cfg = self.config
        before, after = self.evals.get("before", {}), self.evals.get("after", {})
        accuracy_key = next((k for k in before if "accuracy" in k), next(iter(before), None))
        rl_stages = [s for s in cfg.enabled_stages() if s.algorithm != "sft"]
        paths["plot"] = plot_rewards(self.metrics, os.path.join(cfg.output_dir, "reward_curve.png"), accuracy_key, self.stage_spans)
        self.timings["total_s"] = time.perf_counter() - self.started
        stages = {
            s.name: {"sampled_reward_first10": self.sampled_reward_window(s.name, False), "sampled_reward_last10": self.sampled_reward_window(s.name, True)}
            for s in rl_stages
        }
        last_rl = rl_stages[-1].name if rl_stages else None
        first = stages[last_rl]["sampled_reward_first10"] if last_rl else float("nan")
        last = stages[last_rl]["sampled_reward_last10"] if last_rl else float("nan")
        extra = {f"sampled reward {name} (first/last 10 steps)": (v["sampled_reward_first10"], v["sampled_reward_last10"]) for name, v in stages.items()}
        table = before_after_table(before, after, extra or None)
        summary = {
            "run_id": self.run_id,
            "before": before,
            "after": after,
            "evals": self.evals,
            "sampled_reward_first10": first,
            "sampled_reward_last10": last,
            "stages": stages,
            "timings": self.timings,
            "audio_encoder": dict(self.embedder.stats),
            "rollout_engine": type(self.engine).__name__,
            "outputs": paths,
        }
        with open(os.path.join(cfg.output_dir, "summary.json"), "w") as f:
            json.dump(summary, f, indent=2)
        from audiorl.rl import run_dir

        run_dir.update(cfg.output_dir, status="finished", finished=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
        print("\n" + table)
        print(f"\ntotal {self.timings['total_s']:.0f} s; outputs in {os.path.abspath(cfg.output_dir)}")
        return summary


def train(config: RecipeConfig) -> dict[str, Any]:
    """Run a recipe: setup, train every stage, save, report; engines and reward workers are always closed."""
    recipe = RLRecipe(config)
    try:
        recipe.setup()
        recipe.train()
    finally:
        recipe.cleanup()
    paths = recipe.save_checkpoint()
    return recipe.report(paths)
