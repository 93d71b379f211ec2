"""Step-Audio 2 (StepFun's Step-Audio-2-mini, -Base, -Think) behind the AudioLM interface.

The model is audiorl's own implementation (``model/step_audio2_modeling.py``). This module is the
glue: the release's prompt format, audio placeholders per 25 s chunk, think mode, the speech-output
tokens and the parts of a completion.

Prompt format (the official wrapper's): each turn is ``<|BOT|>{role}\\n{content}<|EOT|>`` with no
separator between turns and no BOS; the ``user`` role is spelt ``human``; each audio part becomes,
per 25 s chunk, ``<audio_start>`` + ``<audio_patch>`` x n + ``<audio_end>``. The reply opens after
``<|BOT|>assistant\\n``; in think mode (``model.think``, Step-Audio-2-mini-Think) with ``<think>\\n``.

Speech output. After ``<tts_start>`` the model interleaves 1 text token and 4 audio-code tokens
(``<tts_pad>`` / the last ``<audio_N>`` pad the shorter stream) up to ``<tts_end>``. Codes are
``<audio_0>`` ... in the vocabulary (id = ``<audio_0>``'s id + code); the last one is the audio pad.
A completion's parts: the think text, the answer text (everything else that is text, the
interleaved speech text included) and the audio codes (pads dropped), which rewards take by name.

Token ids are read from the tokenizer, never hard-coded: the release's (``<audio_start>`` 151688,
``<audio_patch>`` 151690, ``<audio_0>`` 151696...) and the tiny model's differ.
"""

from __future__ import annotations

import functools
import os
import re
from collections.abc import Sequence

import numpy as np
import torch
from audiorl.common.errors import ConfigError, DataError
from audiorl.model.base import ATTENTION_PROJ, DENSE_MLP_PROJ, FAMILIES, AudioLM, Messages, find_module, text_layers_regex
from audiorl.model.step_audio2_modeling import (  # noqa: F401  (the functions the vLLM model shares)
    CHUNK_SAMPLES,
    StepAudio2Config,
    StepAudio2ForCausalLM,
    adapt_chunks,
    chunk_token_counts,
    clip_embeddings,
    clip_mels,
    clip_token_count,
    encode_chunks,
    split_chunk_frames,
)
from audiorl.model.weights import base_model, merged_state_dict
from torch import nn

BOT, EOT = "<|BOT|>", "<|EOT|>"
AUDIO_START, AUDIO_END, AUDIO_PATCH = "<audio_start>", "<audio_end>", "<audio_patch>"
TTS_START, TTS_END, TTS_PAD = "<tts_start>", "<tts_end>", "<tts_pad>"
SPECIAL_TOKENS = [BOT, EOT, AUDIO_START, AUDIO_END, AUDIO_PATCH, TTS_START, TTS_END, TTS_PAD]
AUDIO_CODE = "<audio_{}>"
_AUDIO_CODE_RE = re.compile(r"^<audio_(\d+)>$")
#: A clip longer than this is refused (the release itself reads 25 s chunks back to back; the context sets the real bound).
MAX_AUDIO_SECONDS = 600


class StepAudio2Processor:
    """The tokenizer and the 128-mel Whisper feature extractor (the release computes its mels in code)."""

    def __init__(self, tokenizer, feature_extractor=None):
        from transformers import WhisperFeatureExtractor

        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor or WhisperFeatureExtractor(feature_size=128)

    @classmethod
    def from_pretrained(cls, path: str) -> StepAudio2Processor:
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(path)
        missing = [t for t in (BOT, EOT, AUDIO_START, AUDIO_END, AUDIO_PATCH) if t not in tokenizer.get_vocab()]
        if missing:
            raise ConfigError(f"model.path '{path}': the tokenizer lacks Step-Audio 2's token(s) {', '.join(missing)}")
        fe = None
        if os.path.isfile(os.path.join(path, "preprocessor_config.json")):
            fe = WhisperFeatureExtractor.from_pretrained(path)
        return cls(tokenizer, fe)

    def save_pretrained(self, out_dir: str) -> None:
        self.tokenizer.save_pretrained(out_dir)
        self.feature_extractor.save_pretrained(out_dir)


@FAMILIES.register("step_audio_2")
class StepAudio2LM(AudioLM):
    family = "step_audio_2"
    encoder_module = "encoder"
    projector_module = "adapter"
    encode_batch_size = 16
    audio_channels = "first"  # the release keeps channel 0 of multi-channel audio

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: str = "float32", device: str = "cpu", load_model: bool = True
    ) -> StepAudio2LM:
        processor = StepAudio2Processor.from_pretrained(path)
        if not load_model:
            return cls(None, processor, path)
        model = StepAudio2ForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device), processor, path)

    # ----------------------------------------------------------------- text side
    def token_id(self, token: str) -> int:
        return self.tokenizer.convert_tokens_to_ids(token)

    @property
    def audio_placeholder_id(self) -> int:
        return self.token_id(AUDIO_PATCH)

    @property
    def special_input_token_ids(self) -> list[int]:
        return sorted({self.token_id(t) for t in (AUDIO_START, AUDIO_END, AUDIO_PATCH)})

    @property
    def eos_token_ids(self) -> list[int]:
        # The release's wrapper stops on <|EOT|> (its config's eos is <|endoftext|>): both end a reply.
        return sorted({*super().eos_token_ids, self.token_id(EOT)})

    @functools.cached_property
    def _audio_codes(self) -> tuple[int, int] | None:
        codes = {int(m.group(1)): i for t, i in self.tokenizer.get_added_vocab().items() if (m := _AUDIO_CODE_RE.match(t))}
        if not codes:
            return None
        start, count = codes[0], len(codes)
        if any(codes.get(c) != start + c for c in range(count)):
            raise ConfigError("the tokenizer's <audio_N> tokens are not consecutive ids from <audio_0>")
        return start, count

    @property
    def audio_output_token_range(self) -> tuple[int, int] | None:  # type: ignore[override]
        codes = self._audio_codes
        return None if codes is None else (codes[0], codes[0] + codes[1])

    @property
    def audio_pad_code(self) -> int | None:
        """The code that pads the audio stream of an interleaved reply (the last ``<audio_N>``: 6561 in the release)."""
        codes = self._audio_codes
        return None if codes is None else codes[1] - 1

    @property
    def generation_prefix(self) -> str:
        # A spoken reply opens with <tts_start> (the release's {"role": "assistant", "content": "<tts_start>", "eot": False});
        # in think mode the thinking comes first and the model opens the spoken part itself (-Think's examples
        # insert "\n\n<tts_start>" after </think>).
        if self.speech_output and not self.think:
            return TTS_START
        return super().generation_prefix

    def interleave_speech(self, text_ids: Sequence[int], codes: Sequence[int]) -> list[int]:
        """A spoken reply's ids in the release's "ta4" layout: ``<tts_start>``, groups of 1 text token and 4 codes
        (``<tts_pad>`` / the audio pad fill the shorter stream; max(#text, ceil(#codes / 4)) groups), ``<tts_end>``."""
        start, _ = self.audio_output_token_range
        groups = max(len(text_ids), -(-len(codes) // 4))
        out = [self.token_id(TTS_START)]
        for g in range(groups):
            out.append(text_ids[g] if g < len(text_ids) else self.token_id(TTS_PAD))
            out += [start + (codes[i] if i < len(codes) else self.audio_pad_code) for i in range(4 * g, 4 * g + 4)]
        return out + [self.token_id(TTS_END)]

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        out = []
        for message in messages:
            role = "human" if message["role"] == "user" else message["role"]
            content = message["content"]
            if content is None:
                out.append(f"{BOT}{role}\n")
                continue
            if isinstance(content, str):
                body = content
            else:
                body = "".join(
                    f"{AUDIO_START}{AUDIO_PATCH}{AUDIO_END}" if part.get("type") == "audio" else str(part.get("text", ""))
                    for part in content
                )
            out.append(f"{BOT}{role}\n{body}" + ("" if message.get("eot") is False else EOT))
        if add_generation_prompt:
            out.append(f"{BOT}assistant\n")
        return "".join(out)

    def audio_token_count(self, num_samples: int) -> int:
        return clip_token_count(num_samples)

    def audio_ids(self, num_samples: int) -> list[int]:
        # One <audio_start>..<audio_end> block per 25 s chunk; the rendered prompt holds the first start and last end.
        patch, start, end = self.audio_placeholder_id, self.token_id(AUDIO_START), self.token_id(AUDIO_END)
        counts = chunk_token_counts(num_samples)
        if not sum(counts):
            raise DataError(f"an audio clip of {num_samples} samples is too short for Step-Audio 2 (under 20 ms: no audio patch)")
        out: list[int] = []
        for i, n in enumerate(counts):
            out += ([end, start] if i else []) + [patch] * n
        return out

    @property
    def max_audio_samples(self) -> int:
        return MAX_AUDIO_SECONDS * 16000

    # ---------------------------------------------------------------- audio side
    def encode(self, model: nn.Module, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Each clip's kept encoder frames, its chunks' concatenated (``project`` splits them again)."""
        encoder = find_module(model, self.encoder_module)
        fe = self.processor.feature_extractor
        outputs: list[torch.Tensor] = []
        for start in range(0, len(waves), self.encode_batch_size):
            per_clip = [clip_mels(w, fe) for w in waves[start : start + self.encode_batch_size]]
            frames = encode_chunks(encoder, [m for mels in per_clip for m in mels])
            at = 0
            for mels in per_clip:
                outputs.append(torch.cat(frames[at : at + len(mels)]))
                at += len(mels)
        return outputs

    def project(self, model: nn.Module, encoded: torch.Tensor) -> torch.Tensor:
        return torch.cat(adapt_chunks(find_module(model, self.projector_module), split_chunk_frames(encoded)))

    def language_model(self, model: nn.Module) -> nn.Module:
        return base_model(model).model  # "model" also names the whole model under a PEFT wrapper

    # ------------------------------------------------------------------- training
    @property
    def lora_target_regex(self) -> str:
        return text_layers_regex(f"{ATTENTION_PROJ}|{DENSE_MLP_PROJ}")

    def hub_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        return merged_state_dict(model, trainable_only)  # the module tree is the release's: names are hub names

    def save_pretrained(self, model: nn.Module, out_dir: str) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.hub_state_dict(model).items()}
        inner = base_model(model)
        inner.config.architectures = ["StepAudio2ForCausalLM"]
        self.write_checkpoint(out_dir, state, inner.config, getattr(inner, "generation_config", None))
