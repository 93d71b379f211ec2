"""The one interface the rest of audiorl uses to talk to an audio LLM.

An audio LLM here is: an audio encoder -> an adaptor (projector) -> a text LLM whose input
embeddings at audio placeholder positions are replaced by the adaptor's outputs. A family
(Qwen2-Audio, Step-Audio 2, ...) implements the few model-specific pieces: the chat format and
placeholder expansion, the audio features, the encoder, where the adaptor and the language model
live, and which modules LoRA targets. Everything else (rollouts, GRPO, SFT) is family-agnostic.
"""

from __future__ import annotations

import abc
import json
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from audiorl.common.errors import ConfigError, DataError
from audiorl.common.registry import Registry
from audiorl.data.audio import SAMPLE_RATE, Clip
from torch import nn

FAMILIES: Registry[type[AudioLM]] = Registry("model family")

Messages = list[dict[str, Any]]


#: LoRA target pieces of a Qwen2-style decoder layer (the text models of Qwen2.5-/Qwen3-Omni and Step-Audio 2)
ATTENTION_PROJ = r"self_attn\.(q_proj|k_proj|v_proj|o_proj)"
DENSE_MLP_PROJ = r"mlp\.(gate_proj|up_proj|down_proj)"


def text_layers_regex(modules: str) -> str:
    """A PEFT target regex for ``modules`` of the text model's decoder layers only.

    The audio towers' layers ("audio_tower.layers.N.self_attn.q_proj") and vision blocks
    ("visual.blocks.N.mlp.gate_proj") share the leaf names.
    """
    return rf"(.*\.)?model\.layers\.\d+\.({modules})"


def find_module(model: nn.Module, suffix: str) -> nn.Module:
    """The submodule whose qualified name ends with ``suffix`` (works through PEFT/accelerate wrappers).

    The outermost match wins, so a PEFT ``ModulesToSaveWrapper`` is returned rather than the copy
    it wraps: calling the wrapper honours ``disable_adapter()`` for the reference forward.
    """
    for name, module in model.named_modules():
        if name == suffix or name.endswith("." + suffix):
            return module
    raise AttributeError(f"{type(model).__name__} has no submodule '{suffix}'")


class AudioLM(abc.ABC):
    """A loaded audio LLM: the Hugging Face model, its processor, and the family's glue."""

    family: str = ""
    #: Module name suffixes (under the top-level model) of the audio encoder, the adaptor and the text
    #: backbone (the module whose forward takes ``inputs_embeds`` and returns ``last_hidden_state``).
    encoder_module: str = ""
    projector_module: str = ""
    language_model_module: str = "language_model"
    #: ``[start, end)`` of the audio-output code ids in the vocabulary; None: the family outputs text only.
    audio_output_token_range: tuple[int, int] | None = None

    def __init__(self, model: nn.Module, processor: Any, path: str | None = None):
        self.model = model
        self.processor = processor
        self.path = path

    #: think mode (``model.think``): every reply opens with ``<think>\n`` (Step-Audio-2-mini-Think's prefix), written
    #: at the end of the prompt; rewards see the reply with it.
    think: bool = False
    #: how a multi-channel clip becomes mono for this family: "mean" of the channels, or the "first" (data/audio.py)
    audio_channels: str = "mean"
    #: speech output (``model.speech_output``): the family's spoken-reply prefix ends the prompt (Step-Audio 2's ``<tts_start>``).
    speech_output: bool = False

    #: modalities the vLLM model accepts besides audio, turned off for rollouts (none for audio-only families).
    vllm_disabled_modalities: tuple[str, ...] = ()

    @property
    def vllm_loadable(self) -> bool:
        """Whether vLLM can start from ``path`` as it is (else a rollout engine serves it a fresh save)."""
        return self.path is not None

    # ----------------------------------------------------------------- text side
    @property
    def tokenizer(self):
        return self.processor.tokenizer

    @property
    @abc.abstractmethod
    def audio_placeholder_id(self) -> int:
        """The input token whose embedding positions receive audio embeddings."""

    @property
    @abc.abstractmethod
    def special_input_token_ids(self) -> list[int]:
        """Input-only special tokens the policy must never sample (audio placeholders, audio bos/eos...).

        A sampled placeholder would desynchronise audio features and tokens and crash the loss.
        """

    @property
    def eos_token_ids(self) -> list[int]:
        gen = getattr(self.model, "generation_config", None)
        if gen is None and self.model is None and self.path:  # processor-only (a rollout server)
            from transformers import GenerationConfig

            try:
                gen = GenerationConfig.from_pretrained(self.path)
            except OSError:
                gen = None
        ids = gen.eos_token_id if gen is not None else None
        if ids is None:
            ids = self.tokenizer.eos_token_id
        return [ids] if isinstance(ids, int) else list(ids)

    @abc.abstractmethod
    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        """Chat-template text with one placeholder per audio part."""

    @property
    def think_prefix(self) -> str:
        """The reply's opening text that rewards see too (``<think>\n`` in think mode)."""
        return "<think>\n" if self.think else ""

    @property
    def generation_prefix(self) -> str:
        """What the reply opens with, already in the prompt: the ``think_prefix`` (a family may add markers)."""
        return self.think_prefix

    @abc.abstractmethod
    def audio_token_count(self, num_samples: int) -> int:
        """How many placeholder tokens a clip of ``num_samples`` (16 kHz) expands to."""

    def audio_ids(self, num_samples: int) -> list[int]:
        """The ids a clip's one placeholder expands to in a prompt (a family may interleave chunk markers)."""
        return [self.audio_placeholder_id] * self.audio_token_count(num_samples)

    @property
    def max_audio_samples(self) -> int:
        """The longest clip (16 kHz samples) one audio part may hold: the feature extractor's window."""
        return int(self.processor.feature_extractor.n_samples)

    def prompt_ids(self, messages: Messages, clips: Sequence[Clip], add_generation_prompt: bool = True) -> list[int]:
        """Token ids of the rendered prompt with each audio placeholder expanded for its clip."""
        text = self.render(messages, add_generation_prompt=add_generation_prompt)
        if add_generation_prompt:
            text += self.generation_prefix
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        slots = [i for i, t in enumerate(ids) if t == self.audio_placeholder_id]
        if len(slots) != len(clips):
            raise DataError(f"the prompt has {len(slots)} audio parts but {len(clips)} clips were given")
        out: list[int] = []
        start = 0
        for slot, clip in zip(slots, clips):
            if clip.num_samples > self.max_audio_samples:
                raise DataError(
                    f"audio '{clip.source}' is {clip.num_samples / SAMPLE_RATE:.1f} s long; this model reads at most "
                    f"{self.max_audio_samples / SAMPLE_RATE:.0f} s per clip (split it, or trim it in the data)"
                )
            out += ids[start:slot] + self.audio_ids(clip.num_samples)
            start = slot + 1
        return out + ids[start:]

    # ---------------------------------------------------------------- audio side
    def features(self, waves: Sequence[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features padded to the window and their frame mask (the Whisper feature extractor's)."""
        out = self.processor.feature_extractor(
            list(waves), sampling_rate=SAMPLE_RATE, return_attention_mask=True, padding="max_length", return_tensors="pt"
        )
        return out["input_features"], out["attention_mask"]

    @abc.abstractmethod
    def encode(self, model: nn.Module, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Audio-encoder outputs of ``model``'s encoder, one ``[n_tokens_i, d_enc]`` tensor per clip.

        Stops before the adaptor, so that the expensive part can be cached while the adaptor trains.
        """

    def project(self, model: nn.Module, encoded: torch.Tensor) -> torch.Tensor:
        """Adaptor: encoder outputs -> language-model embedding space."""
        return find_module(model, self.projector_module)(encoded)

    def embed(self, model: nn.Module, input_ids: torch.Tensor, audio_embeds: Sequence[torch.Tensor]) -> torch.Tensor:
        """Token embeddings with the placeholder positions of each row, in order, replaced by audio embeddings.

        ``audio_embeds`` lists the projected clips of the whole batch in row-major order.
        """
        embeds = model.get_input_embeddings()(input_ids)
        mask = input_ids == self.audio_placeholder_id
        n_slots = int(mask.sum())
        if not audio_embeds:
            if n_slots:
                raise DataError(f"the batch has {n_slots} audio placeholder tokens but no audio was given")
            return embeds
        audio = torch.cat(list(audio_embeds), dim=0).to(embeds.device, embeds.dtype)
        if audio.size(0) != n_slots:
            raise DataError(
                f"audio embeddings ({audio.size(0)} frames) and audio placeholder tokens ({n_slots}) do not match"
            )
        return embeds.masked_scatter(mask.unsqueeze(-1), audio)

    # ------------------------------------------------------------------- forwards
    def language_model(self, model: nn.Module) -> nn.Module:
        """The text backbone of ``model`` (through PEFT wrappers): ``inputs_embeds`` in, hidden states out."""
        return find_module(model, self.language_model_module)

    def output_head(self, model: nn.Module) -> nn.Module:
        """The LM head (hidden states -> vocabulary logits)."""
        from audiorl.model.weights import base_model

        return base_model(model).get_output_embeddings()

    def forward_inputs(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_embeds: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        """Keyword arguments of the text backbone's forward for these tokens and their audio: the family hook.

        Every forward of the RL core (policy, old policy, reference, critic, SFT) builds its inputs
        here. The default places the audio at the placeholders of the input embeddings; a family whose
        backbone needs more (Omni's multimodal rotary positions) adds it.
        """
        return {"inputs_embeds": self.embed(model, input_ids, audio_embeds), "attention_mask": attention_mask}

    @property
    def audio_pad_code(self) -> int | None:
        """The speech code that only pads the audio stream of an interleaved reply (None: no such code)."""
        return None

    def audio_codes(self, token_ids: Sequence[int]) -> list[int]:
        """The speech codes of a completion (ids in ``audio_output_token_range`` less its start), pads dropped."""
        span = self.audio_output_token_range
        if span is None:
            return []
        pad = self.audio_pad_code
        return [int(t) - span[0] for t in token_ids if span[0] <= t < span[1] and int(t) - span[0] != pad]

    def completion_text(self, text: str, token_ids: Sequence[int] | None = None) -> str:
        """A sampled reply as rewards see it: with the ``think_prefix`` the prompt opened it with.

        With its ``token_ids``, a reply holding speech codes is decoded again without them (its text part),
        whatever the tokenizer marks special.
        """
        span = self.audio_output_token_range
        if token_ids is not None and span is not None and any(span[0] <= t < span[1] for t in token_ids):
            text = self.tokenizer.decode([t for t in token_ids if not span[0] <= t < span[1]], skip_special_tokens=True)
        return self.think_prefix + text

    def think_token_ids(self) -> tuple[int, int] | None:
        """Ids of ``<think>`` and ``</think>`` when each is one token, else None."""
        tok = self.tokenizer
        ids = []
        for tag in ("<think>", "</think>"):
            encoded = tok(tag, add_special_tokens=False)["input_ids"]
            if len(encoded) != 1:
                return None
            ids.append(encoded[0])
        return ids[0], ids[1]

    # ------------------------------------------------------------------- training
    @property
    @abc.abstractmethod
    def lora_target_regex(self) -> str:
        """PEFT ``target_modules`` regex hitting the language model only (not the audio encoder)."""

    #: PEFT ``exclude_modules`` regex: modules LoRA must never touch, whatever the target regex resolves to.
    lora_exclude_regex: str | None = None

    def audio_encoder(self, model: nn.Module | None = None) -> nn.Module:
        return find_module(model if model is not None else self.model, self.encoder_module)

    def projector(self, model: nn.Module | None = None) -> nn.Module:
        return find_module(model if model is not None else self.model, self.projector_module)

    @abc.abstractmethod
    def hub_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """``model``'s current weights (LoRA merged, not in place) under the hub checkpoint's names (vLLM's).

        ``trainable_only``: only those an optimizer step can change (see ``merged_state_dict``).
        """

    def engine_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        """What a rollout engine's in-place reload is sent: ``hub_state_dict``, less what the engine cannot reload."""
        return self.hub_state_dict(model, trainable_only)

    @abc.abstractmethod
    def save_pretrained(self, model: nn.Module, out_dir: str) -> None:
        """Write ``model`` (LoRA merged) and the processor in the hub layout that vLLM loads."""

    def write_checkpoint(self, out_dir: str, state: dict[str, torch.Tensor], config: Any, generation_config: Any) -> None:
        """Weights (hub names), config, generation config and processor: the files ``save_pretrained`` writes."""
        from safetensors.torch import save_file

        os.makedirs(out_dir, exist_ok=True)
        save_file(state, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
        config.save_pretrained(out_dir)
        if generation_config is not None:
            generation_config.save_pretrained(out_dir)
        self.save_processor(out_dir)
        with open(os.path.join(out_dir, "audiorl.json"), "w") as f:
            json.dump({"family": self.family, "layout": "hub"}, f)

    def save_processor(self, out_dir: str) -> None:
        self.processor.save_pretrained(out_dir)


def detect_family(path: str) -> str:
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise ConfigError(f"model.path '{path}' is not a Hugging Face model directory (no config.json)")
    with open(config_path) as f:
        model_type = json.load(f).get("model_type", "")
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model.path '{path}' holds a '{model_type}' model; supported families: {', '.join(FAMILIES.names())}"
        )
    return model_type


def family_class(path: str) -> type[AudioLM]:
    """The AudioLM class of the checkpoint in ``path`` (from its config's ``model_type``; nothing loads)."""
    return FAMILIES.get(detect_family(path))


def load_audio_lm(path: str, dtype: str = "float32", device: str = "cpu", load_model: bool = True) -> AudioLM:
    """Load the audio LLM and processor in ``path`` (a local Hugging Face-format directory).

    ``load_model=False``: the processor and the family's glue only (``model`` is None).
    """
    return FAMILIES.get(detect_family(path)).from_pretrained(path, dtype=dtype, device=device, load_model=load_model)
