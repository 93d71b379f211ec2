"""Step-Audio 2 (``StepAudio2ForCausalLM``, model_type ``step_audio_2``) in stock vLLM.

vLLM ships no Step-Audio 2 model; audiorl's plugin (rollouts/vllm_plugin.py) registers this one by
name, so only vLLM's processes import this module (it imports vLLM at the top; nothing else in
audiorl imports it). It loads the release layout as it is: ``model.*`` and ``lm_head.*`` (a Qwen2
language model, vLLM's own ``Qwen2ForCausalLM`` here, under ``language_model.``), ``encoder.*``
and ``adapter.*`` (audiorl's modules from model/step_audio2_modeling.py, under their own names).

Audio is computed by the trainer's own code: the mels of a clip (``clip_mels``: 25 s chunks, each
its own log-mel) and its embeddings (``clip_embeddings``: each chunk encoded at its own length), so
both sides agree by construction and a clip's embeddings never depend on its batch.

Prompts. audiorl sends ONE ``<audio_patch>`` per clip (rollouts/vllm_worker.py collapses the
trainer's expanded prompt); this processor expands it to the clip's chunk runs::

    <audio_patch>  ->  <audio_patch>*n1 <audio_end><audio_start> <audio_patch>*n2 ...

(the ``<audio_start>`` before and the ``<audio_end>`` after the clip stay in the prompt), with the
``<audio_patch>`` positions, and only those, taking the clip's embeddings.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from functools import lru_cache

import numpy as np
import torch
from audiorl.model import step_audio2_modeling as sa2
from torch import nn
from transformers import BatchFeature
from vllm.config import VllmConfig
from vllm.config.multimodal import MultiModalDummyOptions
from vllm.inputs import MultiModalDataDict
from vllm.model_executor.models.interfaces import (
    MultiModalEmbeddings,
    SupportsLoRA,
    SupportsMultiModal,
    SupportsPP,
)
from vllm.model_executor.models.module_mapping import MultiModelKeys
from vllm.model_executor.models.utils import (
    AutoWeightsLoader,
    WeightsMapper,
    init_vllm_registered_model,
    maybe_prefix,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig, MultiModalKwargsItems
from vllm.multimodal.parse import MultiModalDataItems, MultiModalDataParser
from vllm.multimodal.processing import (
    BaseDummyInputsBuilder,
    BaseMultiModalProcessor,
    BaseProcessingInfo,
    PromptReplacement,
    PromptUpdate,
    PromptUpdateDetails,
)
from vllm.sequence import IntermediateTensors

SAMPLE_RATE = sa2.SAMPLE_RATE
AUDIO_PATCH, AUDIO_START, AUDIO_END = "<audio_patch>", "<audio_start>", "<audio_end>"


def expand_placeholder(chunk_counts: Sequence[int], patch_id: int, start_id: int, end_id: int) -> list[int]:
    """What one clip's placeholder becomes: its chunk runs joined by ``<audio_end><audio_start>``
    (``StepAudio2LM.audio_ids``, which the worker collapses)."""
    out: list[int] = []
    for i, n in enumerate(chunk_counts):
        out += ([end_id, start_id] if i else []) + [patch_id] * int(n)
    return out


def placeholder_length(num_samples: int) -> int:
    """Prompt positions one clip takes after expansion (its patches and the separators between chunks)."""
    counts = sa2.chunk_token_counts(num_samples)
    return sum(counts) + 2 * (len(counts) - 1)


@lru_cache(maxsize=8)
def _feature_extractor(model_dir: str):
    from audiorl.model.step_audio2 import StepAudio2Processor

    return StepAudio2Processor.from_pretrained(model_dir).feature_extractor  # the trainer's, however it is saved


# ------------------------------------------------------------------ processing
class StepAudio2ProcessingInfo(BaseProcessingInfo):
    def get_feature_extractor(self):
        return _feature_extractor(self.ctx.model_config.model)

    def get_hf_processor(self, **kwargs: object):
        # The mels are computed here (_call_hf_processor), not by a transformers processor: there is none
        # registered for this architecture, and the trainer's code is the reference.
        raise NotImplementedError("Step-Audio 2 in vLLM uses no transformers processor (rollouts/vllm_step_audio2.py)")

    def get_supported_mm_processor_kwargs(self) -> dict[str, set[str]]:
        return {"text_kwargs": set(), "audio_kwargs": set()}

    def get_data_parser(self) -> MultiModalDataParser:
        return MultiModalDataParser(
            target_sr=SAMPLE_RATE,
            target_channels=1,
            expected_hidden_size=self._get_expected_hidden_size(),
            allow_missing_mm_embeddings=self.allow_missing_mm_embeddings,
        )

    def get_supported_mm_limits(self) -> Mapping[str, int | None]:
        return {"audio": None}

    def token_ids(self) -> tuple[int, int, int]:
        """Ids of ``<audio_patch>``, ``<audio_start>``, ``<audio_end>`` in the checkpoint's tokenizer."""
        vocab = self.get_tokenizer().get_vocab()
        missing = [t for t in (AUDIO_PATCH, AUDIO_START, AUDIO_END) if t not in vocab]
        if missing:
            raise ValueError(f"the tokenizer of '{self.ctx.model_config.model}' lacks {missing}")
        return vocab[AUDIO_PATCH], vocab[AUDIO_START], vocab[AUDIO_END]

    def max_clip_samples(self, seq_len: int | None = None) -> int:
        """The longest clip vLLM profiles for (its encoder cache then holds one): the longest the trainer takes,
        less when its expansion would not fit ``seq_len`` (such a prompt could not run anyway)."""
        from audiorl.model.step_audio2 import MAX_AUDIO_SECONDS

        samples = MAX_AUDIO_SECONDS * SAMPLE_RATE
        if seq_len is not None:
            while samples > sa2.CHUNK_SAMPLES and placeholder_length(samples) > seq_len:
                samples -= sa2.CHUNK_SAMPLES
        return samples

    def get_mm_max_tokens_per_item(self, seq_len: int, mm_counts: Mapping[str, int] | None = None) -> Mapping[str, int]:
        if (mm_counts or {}).get("audio", 0) <= 0:
            return {}
        return {"audio": placeholder_length(self.max_clip_samples(seq_len))}


class StepAudio2DummyInputsBuilder(BaseDummyInputsBuilder[StepAudio2ProcessingInfo]):
    def get_dummy_text(self, mm_counts: Mapping[str, int]) -> str:
        return (AUDIO_START + AUDIO_PATCH + AUDIO_END) * mm_counts.get("audio", 0)

    def get_dummy_mm_data(
        self, seq_len: int, mm_counts: Mapping[str, int], mm_options: MultiModalDummyOptions
    ) -> MultiModalDataDict:
        return {
            "audio": self._get_dummy_audios(
                length=self.info.max_clip_samples(seq_len),
                num_audios=mm_counts.get("audio", 0),
                overrides=mm_options.get("audio") if mm_options else None,
            )
        }


def _field_config(hf_inputs: Mapping[str, object]) -> dict[str, MultiModalFieldConfig]:
    return {
        # one item per clip: its chunk mels [n_chunks, n_mels, F_max] (zero-padded), their lengths, their patch counts
        "audio_mels": MultiModalFieldConfig.batched("audio"),
        "audio_mel_lens": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
        "audio_chunk_tokens": MultiModalFieldConfig.batched("audio", keep_on_cpu=True),
    }


class StepAudio2MultiModalProcessor(BaseMultiModalProcessor[StepAudio2ProcessingInfo]):
    def _call_hf_processor(self, hf_data: Mapping[str, object], hf_kwargs: Mapping[str, object]) -> BatchFeature:
        audios = hf_data.get("audio", [])
        if not isinstance(audios, (list, tuple)):
            audios = [audios]
        fe = self.info.get_feature_extractor()
        mels, lens, tokens = [], [], []
        for wave in audios:
            wave = np.asarray(wave, dtype=np.float32)
            chunks = sa2.clip_mels(wave, fe)
            counts = sa2.chunk_token_counts(len(wave))
            if len(chunks) != len(counts):
                raise RuntimeError(f"clip_mels gave {len(chunks)} chunks, chunk_token_counts {len(counts)}")
            frames = max(c.shape[-1] for c in chunks)
            padded = torch.zeros(len(chunks), chunks[0].shape[0], frames, dtype=torch.float32)
            for j, c in enumerate(chunks):
                padded[j, :, : c.shape[-1]] = c
            mels.append(padded)
            lens.append(torch.tensor([c.shape[-1] for c in chunks], dtype=torch.long))
            tokens.append(torch.tensor(counts, dtype=torch.long))
        return BatchFeature({"audio_mels": mels, "audio_mel_lens": lens, "audio_chunk_tokens": tokens})

    def _get_mm_fields_config(
        self, hf_inputs: BatchFeature, hf_processor_mm_kwargs: Mapping[str, object]
    ) -> Mapping[str, MultiModalFieldConfig]:
        return _field_config(hf_inputs)

    def _get_prompt_updates(
        self,
        mm_items: MultiModalDataItems,
        hf_processor_mm_kwargs: Mapping[str, object],
        out_mm_kwargs: MultiModalKwargsItems,
    ) -> Sequence[PromptUpdate]:
        patch, start, end = self.info.token_ids()
        chunk_tokens = out_mm_kwargs.get_data().get("audio_chunk_tokens", [])

        def replacement(item_idx: int) -> PromptUpdateDetails:
            counts = [int(n) for n in chunk_tokens[item_idx]]  # a last chunk under ~30 ms has none, as in the release
            if not sum(counts):
                raise ValueError(f"audio item {item_idx} is too short to give any audio token ({counts})")
            return PromptUpdateDetails.select_token_id(expand_placeholder(counts, patch, start, end), patch)

        return [PromptReplacement(modality="audio", target=[patch], replacement=replacement)]


# ----------------------------------------------------------------------- model
@MULTIMODAL_REGISTRY.register_processor(
    StepAudio2MultiModalProcessor, info=StepAudio2ProcessingInfo, dummy_inputs=StepAudio2DummyInputsBuilder
)
class StepAudio2ForCausalLM(nn.Module, SupportsMultiModal, SupportsLoRA, SupportsPP):
    packed_modules_mapping = {
        "qkv_proj": ["q_proj", "k_proj", "v_proj"],
        "gate_up_proj": ["gate_proj", "up_proj"],
    }
    # Release names -> this module tree (also applied to LoRA adapters' module names).
    hf_to_vllm_mapper = WeightsMapper(
        orig_to_new_prefix={"model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
    )

    @classmethod
    def get_placeholder_str(cls, modality: str, i: int) -> str | None:
        if modality.startswith("audio"):
            return AUDIO_START + AUDIO_PATCH + AUDIO_END
        raise ValueError("Step-Audio 2 takes audio only")

    def __init__(self, *, vllm_config: VllmConfig, prefix: str = ""):
        super().__init__()
        config = vllm_config.model_config.hf_config
        self.config = config
        audio = config.audio_encoder_config
        with self._mark_tower_model(vllm_config, "audio"):  # built as the trainer's StepAudio2ForCausalLM builds them
            self.encoder, self.adapter = sa2.audio_modules(audio)
        with self._mark_language_model(vllm_config):
            self.language_model = init_vllm_registered_model(
                vllm_config=vllm_config,
                hf_config=config.text_config,
                prefix=maybe_prefix(prefix, "language_model"),
                architectures=["Qwen2ForCausalLM"],
            )
        self.make_empty_intermediate_tensors = self.language_model.make_empty_intermediate_tensors

    def get_mm_mapping(self) -> MultiModelKeys:
        return MultiModelKeys.from_string_field(language_model="language_model.", connector="adapter.", tower_model="encoder.")

    def embed_multimodal(self, **kwargs: object) -> MultiModalEmbeddings:
        mels = kwargs.pop("audio_mels", None)
        lens = kwargs.pop("audio_mel_lens", None)
        if mels is None:
            return []
        out = []
        for item_mels, item_lens in zip(mels, lens):  # one clip: its chunks, each at its own length
            chunks = [item_mels[j, :, : int(n)] for j, n in enumerate(item_lens)]
            out.append(sa2.clip_embeddings(self.encoder, self.adapter, chunks))
        return tuple(out)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors: IntermediateTensors | None = None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs: object,
    ) -> torch.Tensor | IntermediateTensors:
        if intermediate_tensors is not None:
            inputs_embeds = None
        return self.language_model.model(input_ids, positions, intermediate_tensors, inputs_embeds=inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        return self.language_model.compute_logits(hidden_states)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        # vLLM's loader raises on a parameter the checkpoint left unset; AutoWeightsLoader on a name it cannot place.
        return AutoWeightsLoader(self).load_weights(weights, mapper=self.hf_to_vllm_mapper)
