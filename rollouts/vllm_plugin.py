"""audiorl's vLLM plugin: what stock vLLM needs to serve audiorl's model families, in one place.

vLLM finds it through the ``vllm.general_plugins`` entry point that installing audiorl declares
(pyproject.toml), and runs ``register`` in every process it starts, its model-inspection
subprocess included: no fork of vLLM, no PYTHONPATH tricks, no import-order tricks in the trainer.

Out-of-tree models: Step-Audio 2 (``StepAudio2ForCausalLM``), which stock vLLM lacks, is served by
audiorl's vLLM model (rollouts/vllm_step_audio2.py), registered by "module:Class" name so that vLLM
imports it only for a Step-Audio 2 checkpoint; its transformers config class is registered too
(the release's ``auto_map`` needs ``trust_remote_code``, which audiorl never sets).

CPU compatibility (Qwen2.5-Omni, Qwen3-Omni and every other vLLM model built on ``qwen2_vl``):
only CUDA builds of torchvision exist, and the install removes it on CPU (it breaks transformers'
image utils beside a CPU torch). Two things then fail, both about images and video, which audio
RL never feeds:

1. vLLM's ``qwen2_vl.py`` imports ``smart_resize`` from transformers' torchvision image processor
   module, so 17 vLLM model modules fail to import. transformers ships the same function in its
   PIL image processor module; we register that one under the torchvision module's name.
2. ``Qwen2_5OmniProcessor`` / ``Qwen3OmniMoeProcessor`` want a video processor, which needs
   torchvision. In vLLM's processes their ``from_pretrained`` builds audiorl's Omni processor
   instead (``model/omni_processor.py``: the checkpoint's tokenizer, feature extractor and chat
   template, the PIL image processor, no video part), the one the trainer uses; audiorl starts
   vLLM with images and video off (``limit_mm_per_prompt`` 0).

Where torchvision imports (a CUDA machine), nothing is changed.
"""

from __future__ import annotations

import importlib.util
import sys
import types

_TORCHVISION_IMAGE_MODULE = "transformers.models.qwen2_vl.image_processing_qwen2_vl"


def torchvision_available() -> bool:
    return importlib.util.find_spec("torchvision") is not None


#: Architectures stock vLLM lacks, served by audiorl's own vLLM models (imported by vLLM only when used).
OUT_OF_TREE_MODELS = {"StepAudio2ForCausalLM": "audiorl.rollouts.vllm_step_audio2:StepAudio2ForCausalLM"}


def register() -> None:
    """vLLM's plugin hook (may run several times per process)."""
    _register_models()
    if not torchvision_available():
        _alias_pil_image_processor()
        _omni_processors_without_video()


def _register_models() -> None:
    """audiorl's config classes for transformers and its vLLM models by name (both idempotent)."""
    from audiorl.model.step_audio2_modeling import register_auto_classes
    from vllm import ModelRegistry

    register_auto_classes()  # idempotent
    for arch, target in OUT_OF_TREE_MODELS.items():
        if arch not in ModelRegistry.get_supported_archs():
            ModelRegistry.register_model(arch, target)


def _alias_pil_image_processor() -> None:
    if _TORCHVISION_IMAGE_MODULE in sys.modules:
        return
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as pil

    module = types.ModuleType(_TORCHVISION_IMAGE_MODULE)
    module.__doc__ = "audiorl: transformers' PIL Qwen2-VL image processor, standing in for the torchvision one."
    module.smart_resize = pil.smart_resize
    module.Qwen2VLImageProcessor = pil.Qwen2VLImageProcessorPil
    sys.modules[_TORCHVISION_IMAGE_MODULE] = module


def _omni_processors_without_video() -> None:
    """vLLM builds the Omni processors with ``<ProcessorClass>.from_pretrained``: there, build them without video.

    Patched on the transformers classes (cheap to import) rather than on vLLM's model modules, which
    would cost every vLLM process seconds of imports; without torchvision the stock method fails anyway.
    """
    import transformers
    from audiorl.model.omni_processor import PROCESSOR_CLASSES, omni_processor_from_pretrained

    for class_name in PROCESSOR_CLASSES.values():
        cls = getattr(transformers, class_name, None)
        if cls is None or getattr(cls.from_pretrained, "_audiorl", False):
            continue

        def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
            return omni_processor_from_pretrained(str(pretrained_model_name_or_path))

        from_pretrained._audiorl = True
        cls.from_pretrained = classmethod(from_pretrained)
