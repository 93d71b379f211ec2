"""Parsing completions: the thinking, the answer, and text normalisation for comparisons."""

from __future__ import annotations

import re
import unicodedata

THINK_RE = re.compile(r"<think>(.*?)</think>", re.DOTALL)
ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")


def as_text(completion: object) -> str:
    """A completion as plain text: strings pass; chat messages give their (last) content."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    if isinstance(completion, (list, tuple)) and completion:
        return as_text(completion[-1])
    return "" if completion is None else str(completion)


def thinking(text: str) -> str | None:
    """The content of the first ``<think>...</think>`` block, or None if there is none."""
    match = THINK_RE.search(text)
    return match.group(1) if match else None


def strip_thinking(text: str) -> str:
    """The text after the reasoning: everything after the last ``</think>`` (or an unclosed ``<think>`` dropped)."""
    if "</think>" in text:
        return text.rsplit("</think>", 1)[1]
    if "<think>" in text:
        return ""
    return text


def answer_span(text: str) -> tuple[str, bool]:
    """(answer, tagged): the last ``<answer>`` block's content, else the text after the thinking."""
    after = strip_thinking(text)
    tagged = ANSWER_RE.findall(after)
    if tagged:
        return tagged[-1], True
    return re.sub(r"</?answer>", " ", after), False


def normalize(text: str) -> str:
    """Case-, width- and punctuation-insensitive form: NFKC, lower case, punctuation to spaces, single spaces."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(ch).startswith(("P", "S")) else ch for ch in text)
    return " ".join(text.split())


def has_cjk(text: str) -> bool:
    return bool(_CJK_RE.search(text))
