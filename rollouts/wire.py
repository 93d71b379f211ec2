"""What crosses between the trainer and ``audiorl rollout-server``: JSON for requests and
completions, raw float32 for audio, safetensors for weights. Plain HTTP, so it works on any
machine the servers can be reached from (CPU tests included).

Clips travel once per server: a request names its clips by content key and carries only the
waveforms the server has not acknowledged yet; a server that lost them (restarted) answers 409
with the missing keys and the client sends them again.
"""

from __future__ import annotations

import base64
from dataclasses import asdict
from typing import Any

import numpy as np
import torch
from audiorl.rollouts.base import Completion, SamplingParams
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors


def encode_wave(wave: np.ndarray) -> str:
    return base64.b64encode(np.ascontiguousarray(wave, dtype="<f4").tobytes()).decode("ascii")


def decode_wave(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4").copy()


def encode_params(params: SamplingParams) -> dict[str, Any]:
    return asdict(params)


def decode_params(data: dict[str, Any]) -> SamplingParams:
    return SamplingParams(**data)


def encode_completion(c: Completion) -> dict[str, Any]:
    return {"token_ids": c.token_ids, "text": c.text, "logprobs": c.logprobs, "finished": c.finished}


def decode_completion(data: dict[str, Any]) -> Completion:
    return Completion(
        token_ids=[int(t) for t in data["token_ids"]],
        text=data["text"],
        logprobs=[float(x) for x in data["logprobs"]],
        finished=bool(data["finished"]),
    )


def encode_weights(state: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().to("cpu").contiguous() for k, v in state.items()})


def decode_weights(blob: bytes) -> dict[str, torch.Tensor]:
    return load_safetensors(blob)
