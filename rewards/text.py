"""Parsing completions: the thinking, the answer, and text normalisation for comparisons."""

from __future__ import annotations

import re
import unicodedata

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
    # str.find, not THINK_RE.search: on many unclosed <think> tags the regex retries the lazy scan
    # from every opening tag (quadratic: minutes on 1 MB); the first close after the first open is
    # the same match.
    start = text.find("<think>")
    if start < 0:
        return None
    end = text.find("</think>", start + 7)
    return text[start + 7 : end] if end >= 0 else None


def tagged_blocks(text: str, open_tag: str, close_tag: str) -> list[str]:
    """The contents of non-overlapping ``open ... close`` blocks, left to right (what a lazy regex's findall gives).

    Linear: once an opening tag has no closing tag after it, no later one has.
    """
    blocks, pos = [], 0
    while True:
        start = text.find(open_tag, pos)
        if start < 0:
            return blocks
        end = text.find(close_tag, start + len(open_tag))
        if end < 0:
            return blocks
        blocks.append(text[start + len(open_tag) : end])
        pos = end + len(close_tag)


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
    tagged = tagged_blocks(after, "<answer>", "</answer>")
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
