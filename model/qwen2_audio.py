"""Qwen2-Audio (transformers' ``Qwen2AudioForConditionalGeneration``) behind the AudioLM interface."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from audiorl.model.base import FAMILIES, AudioLM, Messages, find_module
from audiorl.model.weights import base_model, merged_state_dict
from torch import nn

# transformers >= 5 nests the modules as model.{audio_tower,multi_modal_projector,language_model} + lm_head;
# the hub checkpoints (and vLLM's loader) use the original layout below.
_HUB_LAYOUT = [
    (re.compile(r"^model\.language_model\."), "language_model.model."),
    (re.compile(r"^lm_head\."), "language_model.lm_head."),
    (re.compile(r"^model\.audio_tower\."), "audio_tower."),
    (re.compile(r"^model\.multi_modal_projector\."), "multi_modal_projector."),
]

# Chat format of Qwen2-Audio-7B-Instruct: each audio part becomes "Audio N: <|audio_bos|><|AUDIO|><|audio_eos|>\n".
CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n"
    "{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}"
    "Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}"
    "{{ content['text'] }}"
    "{% endif %}"
    "{% endfor %}"
    "<|im_end|>\n"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}"
    "<|im_start|>assistant\n"
    "{% endif %}"
)


def to_hub_key(key: str) -> str:
    for pattern, replacement in _HUB_LAYOUT:
        if pattern.match(key):
            return pattern.sub(replacement, key, count=1)
    raise KeyError(f"unexpected Qwen2-Audio parameter '{key}'")


@FAMILIES.register("qwen2_audio")
class Qwen2AudioLM(AudioLM):
    family = "qwen2_audio"
    encoder_module = "audio_tower"
    projector_module = "multi_modal_projector"
    encode_batch_size = 16

    @classmethod
    def from_pretrained(
        cls, path: str, dtype: str = "float32", device: str = "cpu", load_model: bool = True
    ) -> Qwen2AudioLM:
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        processor = AutoProcessor.from_pretrained(path)
        if not load_model:
            return cls(None, processor, path)
        model = Qwen2AudioForConditionalGeneration.from_pretrained(path, dtype=getattr(torch, dtype))
        return cls(model.to(device), processor, path)

    # ----------------------------------------------------------------- text side
    @property
    def audio_placeholder_id(self) -> int:
        return self.processor.audio_token_id

    @property
    def special_input_token_ids(self) -> list[int]:
        tok = self.tokenizer
        names = [self.processor.audio_token, self.processor.audio_bos_token, self.processor.audio_eos_token]
        return sorted({tok.convert_tokens_to_ids(n) for n in names})

    def render(self, messages: Messages, add_generation_prompt: bool = True) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    def audio_token_count(self, num_samples: int) -> int:
        fe = self.processor.feature_extractor
        frames = min(math.ceil(num_samples / fe.hop_length), fe.nb_max_frames)
        # Qwen2AudioProcessor: conv2 (stride 2) then average pooling (stride 2).
        return (((frames - 1) // 2 + 1) - 2) // 2 + 1

    def encode(self, model: nn.Module, waves: Sequence[np.ndarray]) -> list[torch.Tensor]:
        from transformers.masking_utils import create_bidirectional_mask

        tower = find_module(model, self.encoder_module)
        outputs: list[torch.Tensor] = []
        for start in range(0, len(waves), self.encode_batch_size):
            features, feature_mask = self.features(waves[start : start + self.encode_batch_size])
            param = next(tower.parameters())
            features = features.to(param.device, param.dtype)
            # Same masking as Qwen2AudioModel.forward, so cached outputs equal the model's own path.
            feat_lengths, out_lengths = tower._get_feat_extract_output_lengths(feature_mask.sum(-1))
            max_len = (features.shape[-1] - 2) // 2 + 1
            mask_2d = (torch.arange(max_len)[None, :] < feat_lengths[:, None]).long().to(param.device)
            dummy = torch.zeros(features.shape[0], max_len, 1, dtype=param.dtype, device=param.device)
            attn = create_bidirectional_mask(config=tower.config, inputs_embeds=dummy, attention_mask=mask_2d)
            hidden = tower(features, attention_mask=attn).last_hidden_state
            outputs += [hidden[i, : int(n)] for i, n in enumerate(out_lengths)]
        return outputs

    # ------------------------------------------------------------------- training
    @property
    def lora_target_regex(self) -> str:
        return r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"

    def hub_state_dict(self, model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
        return {to_hub_key(k): v for k, v in merged_state_dict(model, trainable_only).items()}

    def save_pretrained(self, model: nn.Module, out_dir: str) -> None:
        state = {k: v.detach().to("cpu").contiguous() for k, v in self.hub_state_dict(model).items()}
        inner = base_model(model)
        inner.config.architectures = [type(inner).__name__]  # vLLM picks its model class from this
        self.write_checkpoint(out_dir, state, inner.config, getattr(inner, "generation_config", None))
