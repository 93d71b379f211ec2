"""Audio LLMs behind one interface (``AudioLM``); importing this registers the built-in families."""

from audiorl.model import qwen2_audio, qwen_omni, step_audio2  # noqa: F401  (register the families)
from audiorl.model.base import FAMILIES, AudioLM, find_module, load_audio_lm

__all__ = ["FAMILIES", "AudioLM", "find_module", "load_audio_lm"]
