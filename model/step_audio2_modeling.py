"""Step-Audio 2 (StepFun) in plain PyTorch + transformers, written from the public release's facts.

No ``trust_remote_code``: the config and the model are audiorl's, registered with transformers'
Auto classes, and load a release-layout checkpoint (``architectures: ["StepAudio2ForCausalLM"]``,
keys ``model.*`` (a Qwen2 model), ``lm_head.*``, ``encoder.*``, ``adapter.*``). The facts and
their sources are in the project's reference notes; what could not be checked against the real
checkpoint is listed in the README.

Audio path, per 25 s chunk of a 16 kHz clip:
    log-mel [128, F] (waveform + 479 zeros, Whisper's STFT and filters)
    -> encoder: conv k3, conv k3 s2, learned positions, pre-LN blocks, avg-pool 2, ``after_norm``
    -> adaptor: conv k3 s2 + GELU, Linear 2048 + ReLU, Linear -> the LLM's width (12.5 Hz)
and the chunk's embeddings replace its ``<audio_patch>`` run in the prompt.

Batch independence. The release encodes all chunks of a prompt in one padded batch: its mask
offset depends on the padded length, and its adaptor conv reads one frame past each chunk's end,
so a chunk's embeddings change with its batch-mates (errors up to ~10 on random weights). Here a
chunk is only ever batched with chunks of the same length (no padding), and the encoder frames the
adaptor reads are those a chunk gives on its own: ``clip_embeddings`` is the one function every
side (the trainer, the transformers fallback rollouts, the vLLM model) computes them with.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    GenerationMixin,
    PreTrainedConfig,
    PreTrainedModel,
    Qwen2Model,
)
from transformers.modeling_outputs import CausalLMOutputWithPast

SAMPLE_RATE = 16000
CHUNK_SAMPLES = 25 * SAMPLE_RATE  # the release splits audio into 25 s chunks, one <audio_start>..<audio_end> block each
MEL_PAD_SAMPLES = 479  # the release pads each chunk's waveform with 479 zeros before its STFT
HOP = 160
#: The release's hard-coded adaptor hidden width (not in its config).
ADAPTER_HIDDEN = 2048

AUDIO_ENCODER_DEFAULTS = {
    "n_mels": 128,
    "n_audio_ctx": 1500,
    "n_audio_state": 1280,
    "n_audio_head": 20,
    "n_audio_layer": 32,
    "n_codebook_size": 4096,
    "llm_dim": 3584,
    "kernel_size": 3,
    "adapter_stride": 2,
}
# The release's text config spells two Qwen2 fields its own way.
_TEXT_ALIASES = {"num_attention_groups": "num_key_value_heads", "max_seq_len": "max_position_embeddings"}


class StepAudio2Config(PreTrainedConfig):
    """``config.json`` of a Step-Audio 2 checkpoint: a Qwen2 ``text_config`` and an ``audio_encoder_config``."""

    model_type = "step_audio_2"
    sub_configs = {"text_config": AutoConfig}

    def __init__(self, text_config=None, audio_encoder_config=None, **kwargs):
        text = dict(text_config.to_dict() if isinstance(text_config, PreTrainedConfig) else (text_config or {}))
        for alias, name in _TEXT_ALIASES.items():
            if alias in text:
                text.setdefault(name, text.pop(alias))
        text["model_type"] = "qwen2"
        text.setdefault("architectures", ["Qwen2ForCausalLM"])
        text.setdefault("use_sliding_window", False)
        self.text_config = AutoConfig.for_model(**text)
        self.audio_encoder_config = {**AUDIO_ENCODER_DEFAULTS, **(audio_encoder_config or {})}
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)

    def get_text_config(self, *args, **kwargs):
        return self.text_config


# --------------------------------------------------------------------------- features and counts
def chunk_waves(wave: np.ndarray) -> list[np.ndarray]:
    """A 16 kHz clip cut into the release's consecutive 25 s chunks (the last one shorter)."""
    return [wave[start : start + CHUNK_SAMPLES] for start in range(0, max(len(wave), 1), CHUNK_SAMPLES)]


def mel_frames(num_samples: int) -> int:
    """Mel frames ``F`` of a chunk of ``num_samples``: ``(N + 479) // 160``."""
    return (num_samples + MEL_PAD_SAMPLES) // HOP


def patches_for_frames(frames: int) -> int:
    """Audio embeddings (``<audio_patch>`` tokens) of a chunk of ``frames`` mel frames: the release's ``compute_token_num``."""
    length = frames - 2
    encoded = ((length + 1) // 2) // 2  # conv2 stride 2, then average pooling 2
    return (encoded - 1) // 2 + 1  # the adaptor conv: kernel 3, stride 2, padding 1


def chunk_token_counts(num_samples: int) -> list[int]:
    """``<audio_patch>`` tokens of each 25 s chunk of a clip of ``num_samples``."""
    full, rest = divmod(num_samples, CHUNK_SAMPLES)
    sizes = [CHUNK_SAMPLES] * full + ([rest] if rest or not full else [])
    return [patches_for_frames(mel_frames(n)) for n in sizes]


def clip_token_count(num_samples: int) -> int:
    return sum(chunk_token_counts(num_samples))


def encoder_frames_kept(frames: int) -> int:
    """Encoder frames of a chunk the adaptor reads: those its kept patches see (one past the end, as the release)."""
    full = ((frames - 1) // 2 + 1) // 2  # what the encoder gives for the whole mel
    return min(2 * patches_for_frames(frames), full)


def clip_mels(wave: np.ndarray, feature_extractor) -> list[torch.Tensor]:
    """Log-mels ``[128, F]`` of each 25 s chunk: Whisper's feature extractor on the chunk plus 479 zeros."""
    out = []
    for chunk in chunk_waves(np.asarray(wave, dtype=np.float32)):
        padded = np.pad(chunk, (0, MEL_PAD_SAMPLES))
        mel = feature_extractor(
            padded, sampling_rate=SAMPLE_RATE, padding="longest", return_attention_mask=False, return_tensors="pt"
        )["input_features"][0]
        out.append(mel)
    return out


# --------------------------------------------------------------------------- encoder and adaptor
class EncoderAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(width, width)
        self.key = nn.Linear(width, width, bias=False)
        self.value = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        scale = (d // self.heads) ** -0.25
        q = self.query(x).view(b, t, self.heads, -1).transpose(1, 2) * scale
        k = self.key(x).view(b, t, self.heads, -1).transpose(1, 2) * scale
        v = self.value(x).view(b, t, self.heads, -1).transpose(1, 2)
        weights = ((q @ k.transpose(-1, -2)).float() + bias).softmax(dim=-1).to(q.dtype)  # float32 softmax, as the release
        return self.out((weights @ v).transpose(1, 2).reshape(b, t, d))


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.attn_ln = nn.LayerNorm(width)
        self.attn = EncoderAttention(width, heads)
        self.mlp_ln = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_ln(x), bias)
        return x + self.mlp(self.mlp_ln(x))


class AudioEncoder(nn.Module):
    """Whisper-style encoder (keys ``encoder.conv1``, ``conv2``, ``positional_embedding``, ``blocks.N``, ``after_norm``)."""

    def __init__(self, n_mels: int, n_ctx: int, width: int, heads: int, layers: int):
        super().__init__()
        self.conv1 = nn.Conv1d(n_mels, width, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(width, width, kernel_size=3, stride=2, padding=1)
        self.positional_embedding = nn.Embedding(n_ctx, width)
        self.blocks = nn.ModuleList(EncoderBlock(width, heads) for _ in range(layers))
        self.avg_pooler = nn.AvgPool1d(2, stride=2)
        self.after_norm = nn.LayerNorm(width)

    def forward(self, mels: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``mels`` [B, n_mels, T], ``lengths`` [B] valid frames (the release's ``wav_lens``, F - 2) -> ([B, T', d], lengths')."""
        t = mels.size(-1)
        valid = torch.arange(t, device=mels.device)[None, :] < lengths[:, None]
        x = F.gelu(self.conv1(mels))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        valid = valid[:, (t + 1) % 2 :: 2]  # the release's subsampling of the mask to conv2's frames
        x = x + self.positional_embedding.weight[: x.size(1)].to(x.dtype)
        bias = torch.zeros(valid.shape, dtype=torch.float32, device=x.device).masked_fill(~valid, -1e10)[:, None, None, :]
        for block in self.blocks:
            x = block(x, bias)
        x = self.avg_pooler(x.transpose(1, 2)).transpose(1, 2)
        return self.after_norm(x), (lengths + 1) // 2 // 2


class Adaptor(nn.Module):
    """Encoder frames -> LLM embeddings at half the rate (keys ``adapter.conv``, ``linear1``, ``linear2``)."""

    def __init__(self, width: int, llm_dim: int, kernel_size: int = 3, stride: int = 2, hidden: int = ADAPTER_HIDDEN):
        super().__init__()
        self.conv = nn.Conv1d(width, width, kernel_size, stride, padding=(kernel_size - 1) // 2)
        self.linear1 = nn.Linear(width, hidden)
        self.relu = nn.ReLU()
        self.linear2 = nn.Linear(hidden, llm_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.gelu(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.linear2(self.relu(self.linear1(x)))


def audio_modules(audio: dict) -> tuple[AudioEncoder, Adaptor]:
    """The encoder and adaptor an ``audio_encoder_config`` describes (the trainer's model and vLLM's both build them here)."""
    encoder = AudioEncoder(audio["n_mels"], audio["n_audio_ctx"], audio["n_audio_state"], audio["n_audio_head"], audio["n_audio_layer"])
    adapter = Adaptor(
        audio["n_audio_state"],
        audio["llm_dim"],
        audio["kernel_size"],
        audio["adapter_stride"],
        audio.get("adapter_hidden_size", ADAPTER_HIDDEN),
    )
    return encoder, adapter


def _same_length_groups(lengths: Sequence[int]) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(lengths):
        groups[n].append(i)
    return groups


def encode_chunks(encoder: AudioEncoder, mels: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Encoder frames ``[encoder_frames_kept(F), d]`` of each chunk mel; chunks are batched only with equal-length ones."""
    param = encoder.conv1.weight
    out: list[torch.Tensor | None] = [None] * len(mels)
    for frames, index in _same_length_groups([m.size(-1) for m in mels]).items():
        batch = torch.stack([mels[i] for i in index]).to(param.device, param.dtype)
        lengths = torch.full((len(index),), frames - 2, device=param.device)
        hidden, _ = encoder(batch, lengths)
        kept = encoder_frames_kept(frames)
        for row, i in enumerate(index):
            out[i] = hidden[row, :kept]
    return out  # type: ignore[return-value]


def adapt_chunks(adapter: Adaptor, frames: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Adaptor outputs of each chunk's kept encoder frames (equal lengths batched)."""
    out: list[torch.Tensor | None] = [None] * len(frames)
    for length, index in _same_length_groups([f.size(0) for f in frames]).items():
        if length == 0:  # a trailing chunk under ~30 ms has no patch (compute_token_num gives 0), as in the release
            for i in index:
                out[i] = frames[i].new_zeros((0, adapter.linear2.out_features))
            continue
        projected = adapter(torch.stack([frames[i] for i in index]))
        for row, i in enumerate(index):
            out[i] = projected[row]
    return out  # type: ignore[return-value]


def split_chunk_frames(frames: torch.Tensor) -> list[torch.Tensor]:
    """A clip's concatenated kept encoder frames -> one piece per chunk (every chunk but the last is a full 25 s)."""
    full = encoder_frames_kept(mel_frames(CHUNK_SAMPLES))
    n_full = (frames.size(0) - 1) // full
    return list(frames.split([full] * n_full + [frames.size(0) - full * n_full]))


def clip_embeddings(encoder: AudioEncoder, adapter: Adaptor, mels: Sequence[torch.Tensor]) -> torch.Tensor:
    """A clip's audio embeddings ``[sum of its chunks' patches, llm_dim]`` from its chunk mels (every side's one path)."""
    return torch.cat(adapt_chunks(adapter, encode_chunks(encoder, mels)))


# --------------------------------------------------------------------------- the model
class StepAudio2PreTrainedModel(PreTrainedModel):
    config_class = StepAudio2Config
    base_model_prefix = "model"
    supports_gradient_checkpointing = True
    _no_split_modules = ["Qwen2DecoderLayer", "EncoderBlock"]
    _supports_sdpa = True

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.text_config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv1d)):
            nn.init.normal_(module.weight, 0.0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, std)
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        else:
            super()._init_weights(module)


class StepAudio2ForCausalLM(StepAudio2PreTrainedModel, GenerationMixin):
    """Qwen2 text model + lm_head + audio encoder + adaptor, in the release's module tree."""

    def __init__(self, config: StepAudio2Config):
        super().__init__(config)
        text = config.text_config
        self.model = Qwen2Model(text)
        self.lm_head = nn.Linear(text.hidden_size, text.vocab_size, bias=False)
        self.encoder, self.adapter = audio_modules(config.audio_encoder_config)
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.model.embed_tokens

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.model.embed_tokens = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """Text-LM forward; audio comes in through ``inputs_embeds`` (``AudioLM.embed`` puts it at the placeholders)."""
        outputs = self.model(
            input_ids=None if inputs_embeds is not None else input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            past_key_values=past_key_values,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            **kwargs,
        )
        hidden = outputs.last_hidden_state
        keep = slice(-logits_to_keep, None) if logits_to_keep else slice(None)
        logits = self.lm_head(hidden[:, keep])
        loss = None
        if labels is not None:
            loss = self.loss_function(logits, labels, vocab_size=self.config.text_config.vocab_size, **kwargs)
        return CausalLMOutputWithPast(loss=loss, logits=logits, past_key_values=outputs.past_key_values)


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` know ``step_audio_2`` (idempotent), as a release's auto_map would."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if "step_audio_2" not in CONFIG_MAPPING:
        AutoConfig.register("step_audio_2", StepAudio2Config)
        AutoModelForCausalLM.register(StepAudio2Config, StepAudio2ForCausalLM)


register_auto_classes()
