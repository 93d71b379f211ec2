"""From chat messages with audio parts to what a rollout or a forward needs: token ids and clips."""

from __future__ import annotations

from typing import Any

from audiorl.data.audio import AudioStore, Clip
from audiorl.model.base import AudioLM
from audiorl.rollouts.base import RolloutRequest


def clean_messages(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop ``None`` fields that Arrow adds to content parts (a text part must not look like audio)."""
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = [{k: v for k, v in part.items() if v is not None} for part in content]
        out.append({"role": message["role"], "content": content})
    return out


def audio_sources(messages: list[dict[str, Any]]) -> list[str]:
    return [part["audio"] for m in messages if isinstance(m["content"], list) for part in m["content"] if part.get("type") == "audio" and part.get("audio") is not None]


class PromptEncoder:
    """Turns prompts (messages whose audio parts name files) into token ids with expanded audio placeholders."""

    def __init__(self, lm: AudioLM, store: AudioStore):
        self.lm = lm
        self.store = store
        self._ids: dict[tuple[str, tuple[str, ...]], list[int]] = {}

    def clips(self, messages: list[dict[str, Any]], row: int | None = None) -> list[Clip]:
        return [self.store.add_file(path, row=row) for path in audio_sources(messages)]

    def encode(self, messages: list[dict[str, Any]], row: int | None = None) -> tuple[list[int], list[Clip]]:
        messages = clean_messages(messages)
        clips = self.clips(messages, row)
        key = (repr(messages), tuple(c.key for c in clips))
        ids = self._ids.get(key)
        if ids is None:
            ids = self._ids[key] = self.lm.prompt_ids(messages, clips)
        return list(ids), clips

    def completion_ids(self, text: str) -> list[int]:
        """A written completion's token ids as the model would emit it: its text tokens, then the stop token.

        A text that opens with the ``generation_prefix`` (think mode's ``<think>\n``) loses it: the prompt has it.
        """
        prefix = self.lm.generation_prefix
        if prefix and text.startswith(prefix):
            text = text[len(prefix) :]
        return self.lm.tokenizer(text, add_special_tokens=False)["input_ids"] + [self.lm.eos_token_ids[0]]

    def request(self, messages: list[dict[str, Any]], n: int = 1, row: int | None = None) -> RolloutRequest:
        ids, clips = self.encode(messages, row)
        return RolloutRequest(prompt_ids=ids, clips=clips, n=n)
