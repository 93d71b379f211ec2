"""Clips -> the input embeddings the language model sees, running the audio encoder as little as possible.

Every forward that needs audio (generation, the policy log-prob forward, the reference forward,
the loss, SFT) goes through ``AudioEmbedder.inputs_embeds``; nothing else puts audio into the model.

* The encoder runs once per *unique* clip in a call, never once per sampled completion.
* With the encoder frozen (the default, as in Step-Audio 2) its outputs are cached across steps and
  epochs, keyed by the clip's content. On real Qwen2-Audio every clip is padded to a 30 s window,
  so the encoder dominates the cost of a short clip.
* With a trainable encoder, outputs are keyed by the clip, the *role* whose weights computed them
  (policy, reference, ...) and that role's weights version: the trainer calls
  ``weights_changed(role)`` after each optimizer step, so an old version is never served, and the
  reference's outputs (its weights do not change within a stage) are never mixed with the
  policy's. Outputs computed with grad (the loss forward) are never cached.
* The adaptor (projector) runs on every call, so it may train while the encoder stays cached.
"""

from __future__ import annotations

import threading
from collections import Counter, OrderedDict
from collections.abc import Sequence

import torch
from audiorl.data.audio import AudioStore, Clip
from audiorl.model.base import AudioLM
from torch import nn


class AudioEmbedder:
    def __init__(self, lm: AudioLM, store: AudioStore, cache_bytes: int = 1 << 30):
        self.lm = lm
        self.store = store
        self.cache_bytes = cache_bytes
        self._cache: OrderedDict[object, torch.Tensor] = OrderedDict()
        self._cached_bytes = 0
        self._lock = threading.RLock()
        self.versions: Counter[str] = Counter()  # role -> weights version of its (trainable) encoder
        #: encoder_calls: batched encoder invocations; clips_encoded: clips through the encoder;
        #: cache_hits: clips served from the cache.
        self.stats: Counter[str] = Counter()

    # ------------------------------------------------------------------ encoder
    def encoder_trainable(self, model: nn.Module) -> bool:
        return any(p.requires_grad for p in self.lm.audio_encoder(model).parameters())

    def _cache_key(self, trainable: bool, clip: Clip, role: str) -> object:
        # A frozen encoder has the same weights in every role (policy, reference, critic): content only.
        if trainable:
            return (role, self.versions[role], clip.key)
        return clip.key

    def encoded(self, model: nn.Module, clips: Sequence[Clip], role: str = "policy") -> dict[str, torch.Tensor]:
        """Encoder outputs for ``clips``, keyed by clip key; each unique clip is encoded at most once.

        ``role`` names whose weights ``model``'s encoder holds (the policy's, the reference's...).
        """
        unique = list({c.key: c for c in clips}.values())
        trainable = self.encoder_trainable(model)
        with_grad = torch.is_grad_enabled() and trainable
        out: dict[str, torch.Tensor] = {}
        missing: list[Clip] = []
        with self._lock:
            for clip in unique:
                key = self._cache_key(trainable, clip, role)
                hit = None if with_grad else self._cache.get(key)
                if hit is None:
                    missing.append(clip)
                else:
                    self._cache.move_to_end(key)
                    out[clip.key] = hit
                    self.stats["cache_hits"] += 1
        if missing:
            waves = [self.store.wave(c) for c in missing]
            with torch.set_grad_enabled(with_grad):
                encoded = self.lm.encode(model, waves)
            self.stats["encoder_calls"] += 1
            self.stats["clips_encoded"] += len(missing)
            for clip, enc in zip(missing, encoded):
                out[clip.key] = enc
                if not with_grad:
                    self._remember(self._cache_key(trainable, clip, role), enc.detach())
        return out

    def _remember(self, key: object, value: torch.Tensor) -> None:
        with self._lock:
            if key in self._cache:
                return
            self._cache[key] = value
            self._cached_bytes += value.numel() * value.element_size()
            while self._cached_bytes > self.cache_bytes and len(self._cache) > 1:
                _, old = self._cache.popitem(last=False)
                self._cached_bytes -= old.numel() * old.element_size()

    def weights_changed(self, role: str = "policy") -> None:
        """``role``'s weights changed (an optimizer step, a new stage): never serve its old encoder outputs.

        Only outputs of a trainable encoder are keyed by version; those of a frozen one stay valid.
        """
        with self._lock:
            self.versions[role] += 1
            stale = [k for k in self._cache if isinstance(k, tuple) and k[0] == role]
            for key in stale:
                old = self._cache.pop(key)
                self._cached_bytes -= old.numel() * old.element_size()

    def reset_roles(self) -> None:
        """A new stage: every role's weights may have changed (a new reference, merged adapters)."""
        for role in list(self.versions) or ["policy"]:
            self.weights_changed(role)

    # --------------------------------------------------------------- embeddings
    def audio_embeds(self, model: nn.Module, clips: Sequence[Clip], role: str = "policy") -> list[torch.Tensor]:
        """Projected audio embeddings, one tensor per clip in order (the adaptor runs once per unique clip)."""
        encoded = self.encoded(model, clips, role)
        projected = {key: self.lm.project(model, enc) for key, enc in encoded.items()}
        return [projected[c.key] for c in clips]

    def inputs_embeds(
        self, model: nn.Module, input_ids: torch.Tensor, clips_per_row: Sequence[Sequence[Clip]], role: str = "policy"
    ) -> torch.Tensor:
        """Input embeddings of ``input_ids`` ([B, T]) with each row's clips placed at its audio placeholders."""
        if len(clips_per_row) != input_ids.size(0):
            raise ValueError(f"{input_ids.size(0)} rows of token ids but audio for {len(clips_per_row)} rows")
        flat = [clip for row in clips_per_row for clip in row]
        audio = self.audio_embeds(model, flat, role) if flat else []
        return self.lm.embed(model, input_ids, audio)
