"""The policy's current weights as a plain (merged) state dict, without touching the model.

Rollout engines that hold their own copy of the weights (vLLM) need the policy as a plain
checkpoint after every optimizer step. For a PEFT LoRA policy the merged weight is
``W + delta(A, B)`` computed per layer: the trainer's model is never merged and unmerged in place,
so its base weights do not drift by rounding over thousands of syncs.
"""

from __future__ import annotations

import re

import torch
from torch import nn

_BASE_LAYERS = re.compile(r"(\.base_layer)+\.")
_OTHER_ADAPTER = re.compile(r"\.(lora_[A-Za-z_]+|modules_to_save|lora_magnitude_vector)\.")


def base_model(model: nn.Module) -> nn.Module:
    """The transformers model under a PEFT wrapper (the model itself when not wrapped)."""
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover - peft is a core dependency
        return model
    return model.get_base_model() if isinstance(model, PeftModel) else model


@torch.no_grad()
def merged_state_dict(model: nn.Module, trainable_only: bool = False) -> dict[str, torch.Tensor]:
    """Parameter names as the unwrapped transformers model has them, LoRA deltas of the active adapter added.

    ``trainable_only``: just the weights an optimizer step can change (LoRA-merged layers,
    ``modules_to_save``, parameters that require grad): what a rollout engine needs after its first sync.
    """
    inner = base_model(model)
    if inner is model:
        state = dict(model.state_dict())
        if trainable_only:
            state = {k: state[k] for k, p in model.named_parameters() if p.requires_grad and k in state}
        return state
    from peft.tuners.lora import LoraLayer

    adapter = model.active_adapter
    deltas: dict[str, torch.Tensor] = {}
    for name, module in inner.named_modules():
        if isinstance(module, LoraLayer) and adapter in getattr(module, "lora_A", {}):
            if not module.merged:  # a merged layer already holds W + delta
                # PEFT's ParamWrapper (target_parameters, e.g. fused MoE experts) adapts one named nn.Parameter;
                # two on one module nest, each wrapping the other as its base_layer
                param = getattr(module, "parameter_name", None) or "weight"
                deltas[_BASE_LAYERS.sub(".", f"{name}.{param}")] = module.get_delta_weight(adapter)
    state: dict[str, torch.Tensor] = {}
    saved = f".modules_to_save.{adapter}."
    trained_copies: set[str] = set()  # modules_to_save: the adapter's trained copy replaces the module
    for key, value in inner.state_dict().items():
        if saved in key:
            trained_copies.add(key.replace(saved, "."))
            state[key.replace(saved, ".")] = value
            continue
        if ".original_module." in key or _OTHER_ADAPTER.search(key):
            continue  # frozen copies of modules_to_save, adapter matrices (ours and e.g. TRL's "ref" copy)
        state.setdefault(_BASE_LAYERS.sub(".", key), value)
    for key, delta in deltas.items():
        state[key] = state[key] + delta.to(state[key].dtype)
    if trainable_only:
        keep = set(deltas) | trained_copies
        for key, param in inner.named_parameters():
            if param.requires_grad and not _OTHER_ADAPTER.search(key) and ".original_module." not in key:
                keep.add(_BASE_LAYERS.sub(".", key))
        state = {k: v for k, v in state.items() if k in keep}
    return state
