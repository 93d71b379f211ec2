"""One vLLM engine serving an audio LLM: prompts with audio in, completions out, weights replaceable.

Shared by the colocated backend (vLLM in the trainer's process) and ``audiorl rollout-server``.
What it takes care of, each learnt the hard way:

* Prompts go in as token ids with ONE placeholder per clip: vLLM expands the placeholder itself
  from the audio it is given; ids that audiorl already expanded would be expanded a second time.
  A clip's expansion is the family's (``AudioLM.audio_ids``: Step-Audio 2 puts chunk markers
  between its 25 s runs), collapsed exactly or refused.
* Every sampled completion is its own request with its own seed (``seed``, call, prompt, index):
  results do not depend on batching, on how requests are split over servers, or on vLLM's
  handling of ``n > 1`` with a seed.
* Log-probs are vLLM's *processed* log-probs (temperature applied), what the trainer recomputes.
* After new weights, the prefix cache, the encoder cache (audio embeddings of the old encoder)
  and the multimodal processor cache are reset: any of them would otherwise serve results of the
  old weights (a stale encoder cache is the audio-specific one).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from audiorl.rollouts.base import Completion, SamplingParams

SAMPLE_RATE = 16000
_SUPPRESS = -1e9  # logit bias that keeps input-only tokens (audio placeholders) from ever being sampled


@dataclass
class WorkerPrompt:
    """A prompt as the worker takes it: ids with one placeholder per clip, the clips' waveforms, n."""

    prompt_ids: list[int]
    waves: list[np.ndarray]
    n: int = 1


def collapse_placeholders(
    ids: Sequence[int], placeholder_id: int, clip_ids: Sequence[Sequence[int]] | None = None
) -> list[int]:
    """Each clip's placeholders -> one placeholder (vLLM expands it again from the audio).

    Without ``clip_ids`` a clip is one run of placeholders. With them (what each clip's one
    placeholder expands to in the trainer's prompt, ``AudioLM.audio_ids``, in prompt order) a clip
    may interleave other ids with its placeholders (Step-Audio 2: ``<audio_end><audio_start>``
    between its 25 s chunk runs), and a clip whose ids are not the expected ones is an error, not
    a silent shift of the audio against the tokens.
    """
    ids = [int(t) for t in ids]
    out: list[int] = []
    i, clip = 0, 0
    while i < len(ids):
        if ids[i] != placeholder_id:
            out.append(ids[i])
            i += 1
            continue
        if clip_ids is None:
            while i < len(ids) and ids[i] == placeholder_id:
                i += 1
        else:
            if clip >= len(clip_ids):
                raise ValueError(f"the prompt holds more audio placeholders than its {len(clip_ids)} clip(s)")
            expected = [int(t) for t in clip_ids[clip]]
            end = i + len(expected)
            if ids[i:end] != expected or (end < len(ids) and ids[end] == placeholder_id):
                raise ValueError(
                    f"audio clip {clip}: the prompt's placeholder ids at {i} are not the {len(expected)} its audio expands to"
                )
            i = end
        out.append(placeholder_id)
        clip += 1
    if clip_ids is not None and clip != len(clip_ids):
        raise ValueError(f"the prompt holds {clip} clip(s)' placeholders for {len(clip_ids)} clip(s)")
    return out


def placeholder_options(lm: Any) -> dict[str, Any]:
    """``VLLMWorker``'s placeholder keywords for ``lm``: the placeholder id, and what each clip's one
    placeholder expands to (vLLM's model of the family expands it to the same ids)."""
    return {"placeholder_id": lm.audio_placeholder_id, "audio_ids": lm.audio_ids}


def vllm_environment() -> None:
    """Process settings vLLM must see before it is imported."""
    # One process: the engine core runs in the caller's process (weights are reloaded in place).
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")


class VLLMWorker:
    def __init__(
        self,
        model_dir: str,
        *,
        dtype: str = "float32",
        seed: int = 0,
        max_model_len: int = 4096,
        kv_cache_mb: int | None = None,
        gpu_memory_utilization: float = 0.3,
        enforce_eager: bool | None = None,
        sleep_mode: bool = False,
        max_audio_per_prompt: int = 1,
        disabled_modalities: Sequence[str] = (),
        stop_token_ids: Sequence[int] = (),
        suppress_token_ids: Sequence[int] = (),
        placeholder_id: int,
        audio_ids: Callable[[int], Sequence[int]] | None = None,
        engine_options: dict[str, Any] | None = None,
    ):
        vllm_environment()
        from vllm import LLM

        on_gpu = torch.cuda.is_available()
        if kv_cache_mb is None and not on_gpu:
            kv_cache_mb = 256  # on CPU vLLM's default sizing counts the whole process's memory against it
        options: dict[str, Any] = {
            "model": model_dir,
            "dtype": dtype,
            "seed": seed,
            "max_model_len": max_model_len,
            "enforce_eager": (not on_gpu) if enforce_eager is None else enforce_eager,
            "distributed_executor_backend": "uni",
            # other modalities at 0: vLLM then neither profiles nor accepts them (Omni's video needs torchvision)
            "limit_mm_per_prompt": {"audio": max_audio_per_prompt, **{m: 0 for m in disabled_modalities}},
            "logprobs_mode": "processed_logprobs",
            "gpu_memory_utilization": gpu_memory_utilization,
        }
        if not on_gpu:
            # Chunked prefill rewinds a seeded request's generator by an offset, which CPU generators lack
            # ("CPU Generator does not use offset"): schedule whole prompts instead.
            options["enable_chunked_prefill"] = False
            options["max_num_batched_tokens"] = max(max_model_len, 8192)
        if kv_cache_mb is not None:
            options["kv_cache_memory_bytes"] = int(kv_cache_mb) * 2**20
        self.sleep_mode = bool(sleep_mode and on_gpu)
        if self.sleep_mode:
            options["enable_sleep_mode"] = True
        options.update(engine_options or {})  # more of vLLM's own options (tests: enable_lora)
        self.llm = LLM(**options)
        self.tokenizer = self.llm.get_tokenizer()
        self.seed = seed
        self.placeholder_id = placeholder_id
        self.audio_ids = audio_ids
        self.stop_token_ids = list(stop_token_ids)
        self.logit_bias = {int(t): _SUPPRESS for t in suppress_token_ids}
        self.asleep = False
        self.calls = 0  # generate calls so far: part of every request's seed

    # ---------------------------------------------------------------- generate
    def generate(
        self,
        prompts: Sequence[WorkerPrompt],
        params: SamplingParams,
        call: int | None = None,
        first_prompt: int = 0,
        seed: int | None = None,
    ) -> list[list[Completion]]:
        """``prompt.n`` completions per prompt.

        Seeds come from (``seed``, ``call``, ``first_prompt`` + the prompt's index, the completion's
        index): a server given a slice of a call's prompts samples what one engine given all would.
        ``seed`` is the trainer's (a server's own ``--seed`` when the request names none).
        """
        from vllm import SamplingParams as VLLMSamplingParams

        self.wake_up()
        call = self.calls if call is None else call
        seed = self.seed if seed is None else seed
        self.calls += 1
        inputs, sampling, owners = [], [], []
        for i, prompt in enumerate(prompts):
            ids = self.collapse(prompt)
            request: dict[str, Any] = {"prompt_token_ids": ids}
            if prompt.waves:
                audio = [(np.asarray(w, dtype=np.float32), SAMPLE_RATE) for w in prompt.waves]
                request["multi_modal_data"] = {"audio": audio if len(audio) > 1 else audio[0]}
            for k in range(prompt.n):
                inputs.append(request)
                sampling.append(
                    VLLMSamplingParams(
                        n=1,
                        max_tokens=params.max_new_tokens,
                        temperature=params.temperature,
                        top_p=params.top_p,
                        top_k=params.top_k if params.top_k > 0 else -1,
                        seed=None if params.greedy else _request_seed(seed, call, first_prompt + i, k),
                        stop_token_ids=self.stop_token_ids,
                        logit_bias=self.logit_bias or None,
                        logprobs=0,  # the sampled token's log-prob
                        skip_special_tokens=True,
                    )
                )
                owners.append(i)
        outputs = self.llm.generate(inputs, sampling, use_tqdm=False)
        results: list[list[Completion]] = [[] for _ in prompts]
        for owner, output in zip(owners, outputs):
            results[owner].append(self._completion(output.outputs[0]))
        return results

    def collapse(self, prompt: WorkerPrompt) -> list[int]:
        """The prompt as vLLM takes it: one placeholder per clip."""
        clip_ids = None if self.audio_ids is None else [self.audio_ids(len(w)) for w in prompt.waves]
        return collapse_placeholders(prompt.prompt_ids, self.placeholder_id, clip_ids)

    def _completion(self, out: Any) -> Completion:
        ids = list(out.token_ids)
        logprobs = [float(step[token].logprob) for token, step in zip(ids, out.logprobs or [])]
        if len(logprobs) != len(ids):
            raise RuntimeError(f"vLLM returned {len(logprobs)} log-probs for {len(ids)} tokens")
        return Completion(token_ids=ids, text=out.text, logprobs=logprobs, finished=out.finish_reason == "stop")

    # ------------------------------------------------------------------ weights
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Replace the named weights (hub names) and drop every cache built from the old ones."""
        self.wake_up()
        batch = [(name, tensor.detach().contiguous()) for name, tensor in weights]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": batch})
        self.reset_caches()
        return len(batch)

    def reset_caches(self) -> None:
        self.llm.reset_prefix_cache()
        self.llm.llm_engine.reset_encoder_cache()
        self.llm.reset_mm_cache()

    # ------------------------------------------------------------------- memory
    def sleep(self) -> None:
        """GPU: offload the weights and drop the KV cache while the trainer steps (no-op elsewhere)."""
        if self.sleep_mode and not self.asleep:
            self.llm.sleep(level=1)
            self.asleep = True

    def wake_up(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False


def _request_seed(seed: int, call: int, prompt: int, index: int) -> int:
    return (seed * 1_000_003 + call * 10_007 + prompt * 101 + index) % (2**31 - 1)
