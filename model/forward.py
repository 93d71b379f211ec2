"""One audio-aware forward for every role: policy, old policy, reference, critic and SFT.

Each forward builds its inputs through ``AudioLM.forward_inputs`` (the family hook) from token ids
and each row's clips, via the ``AudioEmbedder`` (encoder once per clip, cached by clip, role and
weights version). No forward of an audio LLM runs without its audio: a batch whose rows and clips
do not line up is refused.

Rows are laid out as TRL lays them: the prompt left-padded to a common width ``start``, then the
completion, right-padded. Only the positions that predict completion tokens go through the LM head
(a prompt is ~4x longer than a short completion, and the head is the widest matrix of a small LM).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any, Callable

import torch
from audiorl.data.audio import Clip
from audiorl.model.audio_embed import AudioEmbedder
from audiorl.model.base import AudioLM
from torch import nn

ROLES = ("policy", "reference", "critic")


@dataclass
class Sequences:
    """Token rows for one forward: ``[prompt (left-padded to start) | completion (right-padded)]``."""

    input_ids: torch.Tensor  # [B, T]
    attention_mask: torch.Tensor  # [B, T]
    clips: Sequence[Sequence[Clip]]  # each row's clips, in placeholder order
    start: int  # column of the first completion token

    def __post_init__(self) -> None:
        if len(self.clips) != self.input_ids.size(0):
            # Never run an audio LLM forward without its audio (stock TRL's silent failure).
            raise ValueError(f"audio-aware forward: {self.input_ids.size(0)} rows of tokens but audio for {len(self.clips)} rows")
        if not 0 < self.start <= self.input_ids.size(1):
            raise ValueError(f"completion start {self.start} outside rows of width {self.input_ids.size(1)}")

    @property
    def completion_ids(self) -> torch.Tensor:
        return self.input_ids[:, self.start :]


class AudioForward:
    """Log-probs, hidden states and values of token rows with their audio, for any role."""

    def __init__(self, lm: AudioLM, embedder: AudioEmbedder, autocast: Callable[[], AbstractContextManager] = nullcontext):
        self.lm = lm
        self.embedder = embedder
        self.autocast = autocast

    def model_inputs(
        self, model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, clips: Sequence[Sequence[Clip]], role: str
    ) -> dict[str, Any]:
        """The text backbone's keyword arguments for these rows: audio placed, family extras added."""
        if len(clips) != input_ids.size(0):
            raise ValueError(f"audio-aware forward: {input_ids.size(0)} rows of tokens but audio for {len(clips)} rows")
        flat = [clip for row in clips for clip in row]
        audio = self.embedder.audio_embeds(model, flat, role) if flat else []
        return self.lm.forward_inputs(model, input_ids, attention_mask, audio)

    def completion_hidden(self, model: nn.Module, seqs: Sequences, role: str, inputs: dict[str, Any] | None = None) -> torch.Tensor:
        """Last hidden states at the positions that predict each completion token: ``[B, C, H]``."""
        if inputs is None:
            inputs = self.model_inputs(model, seqs.input_ids, seqs.attention_mask, seqs.clips, role)
        with self.autocast():
            hidden = self.lm.language_model(model)(**inputs, use_cache=False).last_hidden_state
        width = seqs.input_ids.size(1) - seqs.start
        return hidden[:, seqs.start - 1 : seqs.start - 1 + width]

    def token_logps(
        self, model: nn.Module, seqs: Sequences, role: str, temperature: float = 1.0, with_entropy: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Log-probs of the completion tokens at ``temperature`` (``[B, C]``) and, optionally, the entropy per token."""
        from trl.trainer.utils import entropy_from_logits, selective_log_softmax

        hidden = self.completion_hidden(model, seqs, role)
        with self.autocast():
            logits = self.lm.output_head(model)(hidden)
        logits = logits.float() / temperature
        logps = selective_log_softmax(logits, seqs.completion_ids)
        entropy = None
        if with_entropy:
            with torch.no_grad():
                entropy = entropy_from_logits(logits)
        return logps, entropy

    @torch.no_grad()
    def critic_inputs(self, policy: nn.Module, seqs: Sequences) -> dict[str, Any]:
        """The policy's input embeddings (audio included) for a critic, without grad: it learns values, not how to hear."""
        inputs = self.model_inputs(policy, seqs.input_ids, seqs.attention_mask, seqs.clips, "policy")
        return {k: (v.detach() if torch.is_tensor(v) else v) for k, v in inputs.items()}

    def values(self, critic: nn.Module, policy: nn.Module, seqs: Sequences, inputs: dict[str, Any] | None = None) -> torch.Tensor:
        """A critic's value of the state before each completion token (``[B, C]``), read from the policy's inputs.

        A shared-base critic's gradient must be taken inside ``critic.active()``, with ``inputs``
        computed outside it (they are the policy's, its adapter on).
        """
        if inputs is None:
            inputs = self.critic_inputs(policy, seqs)
        with self.autocast():
            hidden = critic.hidden_states(inputs)
        width = seqs.input_ids.size(1) - seqs.start
        hidden = hidden[:, seqs.start - 1 : seqs.start - 1 + width]
        return critic.head(hidden.float()).squeeze(-1)
