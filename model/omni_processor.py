"""The Qwen Omni processors, built for audio: the same object on the trainer side and inside vLLM.

``Qwen2_5OmniProcessor`` and ``Qwen3OmniMoeProcessor`` insist on a video processor, and
transformers' video processors need torchvision, of which only CUDA builds exist (the CPU install
removes it). Audio RL never feeds video, so the processor is built here from the checkpoint's
tokenizer, its Whisper feature extractor and chat template, transformers' PIL image processor, and
a video processor that refuses video. vLLM gets the same processor through audiorl's vLLM plugin
(``rollouts/vllm_plugin.py``), so both sides expand audio placeholders identically.
"""

from __future__ import annotations

import json
import os
from typing import Any

from audiorl.common.errors import ConfigError, DataError

#: config.json ``model_type`` -> the transformers processor class that family's checkpoints name.
PROCESSOR_CLASSES = {
    "qwen2_5_omni": "Qwen2_5OmniProcessor",
    "qwen3_omni_moe": "Qwen3OmniMoeProcessor",
}


def _no_video_processor_class():
    import transformers

    # Without torchvision transformers exports a placeholder BaseVideoProcessor, and the Omni processors
    # check their video part against whatever it exports: subclass that (never calling its __init__).
    class NoVideoProcessor(transformers.BaseVideoProcessor):
        """Stands in for the Omni video processor: audio RL feeds no video (and on CPU there is no torchvision)."""

        def __init__(self) -> None:
            # read by the Omni processors when they expand placeholders, video or not
            self.merge_size = 2
            self.temporal_patch_size = 2
            self.model_input_names = ["pixel_values_videos", "video_grid_thw"]

        def __call__(self, *args: Any, **kwargs: Any):
            raise DataError("audiorl's Omni processor takes text and audio only; video input is not supported")

    return NoVideoProcessor


def _image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil()


def read_chat_template(path: str) -> str | None:
    """The checkpoint's chat template: ``chat_template.jinja``, ``chat_template.json`` or the tokenizer's."""
    jinja = os.path.join(path, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja) as f:
            return f.read()
    as_json = os.path.join(path, "chat_template.json")
    if os.path.isfile(as_json):
        with open(as_json) as f:
            return json.load(f).get("chat_template")
    return None


def omni_processor(model_type: str, tokenizer: Any, feature_extractor: Any, chat_template: str | None):
    """An Omni processor for ``model_type`` from its parts (no video part)."""
    import transformers

    model_type = model_type.removesuffix("_thinker")  # a thinker saved on its own
    if model_type not in PROCESSOR_CLASSES:
        raise ConfigError(f"no Omni processor for model_type '{model_type}' (known: {', '.join(PROCESSOR_CLASSES)})")
    cls = getattr(transformers, PROCESSOR_CLASSES[model_type])
    return cls(
        image_processor=_image_processor(),
        video_processor=_no_video_processor_class()(),
        feature_extractor=feature_extractor,
        tokenizer=tokenizer,
        chat_template=chat_template or tokenizer.chat_template,
    )


def omni_processor_from_pretrained(path: str):
    """The processor of the Omni checkpoint in ``path`` (tokenizer, feature extractor and template read from it)."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    with open(os.path.join(path, "config.json")) as f:
        model_type = json.load(f).get("model_type", "")
    tokenizer = AutoTokenizer.from_pretrained(path)
    feature_extractor = WhisperFeatureExtractor.from_pretrained(path)
    return omni_processor(model_type, tokenizer, feature_extractor, read_chat_template(path))
