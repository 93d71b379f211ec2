"""vLLM in the trainer's process: the ``vllm`` backend with ``rollout.vllm.mode: colocate``."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from typing import Any

from audiorl.rollouts.base import Completion, RolloutEngine, RolloutRequest, SamplingParams
from audiorl.rollouts.sync import WeightSync
from audiorl.rollouts.vllm_worker import VLLMWorker, WorkerPrompt, placeholder_options
from torch import nn


def worker_options(lm: Any, config: Any, seed: int) -> dict[str, Any]:
    """``VLLMWorker`` keyword arguments from the recipe's ``rollout`` section and the policy."""
    v = config.vllm
    return {
        "dtype": str(lm.model.dtype).removeprefix("torch."),
        "seed": seed,
        "max_model_len": v.max_model_len,
        "kv_cache_mb": v.kv_cache_mb,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "enforce_eager": v.enforce_eager,
        "sleep_mode": v.sleep_mode,
        "max_audio_per_prompt": v.max_audio_per_prompt,
        "disabled_modalities": lm.vllm_disabled_modalities,
        "stop_token_ids": lm.eos_token_ids,
        "suppress_token_ids": lm.special_input_token_ids,
        **placeholder_options(lm),
    }


class VLLMColocatedEngine(RolloutEngine):
    """Starts vLLM from the policy's checkpoint directory; the trainer's weights reach it after every step."""

    samples_from_trainer_model = False

    def __init__(self, lm: Any, embedder: Any, config: Any, seed: int = 0):
        super().__init__(lm, embedder, config, seed)
        self._snapshot = None
        model_dir = lm.path
        if model_dir is None or not lm.vllm_loadable:  # in memory, or a layout vLLM cannot load: save one
            self._snapshot = model_dir = tempfile.mkdtemp(prefix="audiorl-vllm-")
            lm.save_pretrained(lm.model, model_dir)
        self.worker = VLLMWorker(model_dir, **worker_options(lm, config, seed))
        self.sync = WeightSync(lm)

    def generate(self, requests: Sequence[RolloutRequest], params: SamplingParams) -> list[list[Completion]]:
        store = self.embedder.store
        prompts = [WorkerPrompt(r.prompt_ids, [store.wave(c) for c in r.clips], r.n) for r in requests]
        return self.worker.generate(prompts, params)

    def update_weights(self, model: nn.Module) -> None:
        self.worker.load_weights(self.sync.changed(model).items())

    def release(self) -> None:
        self.worker.sleep()

    def resume(self) -> None:
        self.worker.wake_up()

    def close(self) -> None:
        if self._snapshot:
            shutil.rmtree(self._snapshot, ignore_errors=True)
            self._snapshot = None
