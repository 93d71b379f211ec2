"""Built-in rewards. Each takes the completions and the dataset columns it names; one value per completion."""

from __future__ import annotations

import re
from collections.abc import Sequence

from audiorl.rewards.registry import reward
from audiorl.rewards.text import answer_span, as_text, has_cjk, normalize, thinking


def _labels(label: object) -> list[str]:
    if isinstance(label, (list, tuple)):
        return [normalize(str(x)) for x in label]
    return [normalize(str(label))]


@reward("label_accuracy")
def label_accuracy(completions: Sequence, label: Sequence, **_) -> list[float]:
    """1.0 when the answer matches the label, else 0.0.

    The answer is the last ``<answer>...</answer>`` block, or else the final word(s) of the text
    after the thinking; the comparison ignores case, width and punctuation. ``label`` may be a
    list of acceptable answers.

    >>> label_accuracy(["<think>hm</think><answer>High.</answer>", "it is low", "<answer>low</answer>"], ["high", "low", "high"])
    [1.0, 1.0, 0.0]
    """
    scores = []
    for completion, gold in zip(completions, label, strict=True):
        answer, tagged = answer_span(as_text(completion))
        words = normalize(answer).split()
        ok = False
        for target in _labels(gold):
            target_words = target.split()
            if tagged:
                ok |= words == target_words
            else:
                ok |= bool(target_words) and words[-len(target_words) :] == target_words
        scores.append(1.0 if ok else 0.0)
    return scores


@reward("cot_format")
def cot_format(completions: Sequence, **_) -> list[float]:
    """1.0 for ``<think>non-empty</think>`` followed by a non-empty answer (tags, if used, balanced), else 0.0.

    >>> cot_format(["<think>a</think><answer>b</answer>", "<think></think>b", "b", "<think>a</think>"])
    [1.0, 0.0, 0.0, 0.0]
    """
    scores = []
    for completion in completions:
        text = as_text(completion).strip()
        ok = (
            text.startswith("<think>")
            and text.count("<think>") == 1
            and text.count("</think>") == 1
            and bool((thinking(text) or "").strip())
        )
        if ok:
            after = text.split("</think>", 1)[1]
            opened, closed = after.count("<answer>"), after.count("</answer>")
            answer, _ = answer_span(text)
            ok = opened == closed <= 1 and bool(answer.strip())
            if ok and opened:
                ok = after.strip().startswith("<answer>") and after.strip().endswith("</answer>")
        scores.append(1.0 if ok else 0.0)
    return scores


def _length(text: str, unit: str) -> int:
    if unit == "chars":
        return len(text.strip())
    if unit == "words":  # CJK characters count as words: Chinese has no spaces
        return sum(len(w) if has_cjk(w) else 1 for w in text.split())
    raise ValueError(f"think_length: unit must be 'words' or 'chars', got '{unit}'")


@reward("think_length")
def think_length(completions: Sequence, max_length: int = 256, unit: str = "words", **_) -> list[float]:
    """Step-Audio 2's first PPO stage: 1.0 if the thinking is neither empty nor over ``max_length``, else 0.0.

    >>> think_length(["<think>one two</think>x", "<think> </think>x", "no thinking"], max_length=1)
    [0.0, 0.0, 0.0]
    >>> think_length(["<think>one two</think>x"], max_length=2)
    [1.0]
    """
    scores = []
    for completion in completions:
        thought = thinking(as_text(completion))
        n = _length(thought, unit) if thought is not None else 0
        scores.append(1.0 if 0 < n <= max_length else 0.0)
    return scores


# Each run of spaces has one place to go (no two adjacent \s* around an optional item): adjacent ones
# let a long run of spaces be split every way, cubic on "( <1 MB of spaces>!".
_LETTER = re.compile(r"^\(?\s*(?:(?:option|choice|answer)\s*)?(?:[:\-]\s*)?\(?([a-z])\)?\s*(?:[\.\):]\s*)?(.*)$", re.IGNORECASE)


_LETTER_IN_TEXT = re.compile(r"\(([A-Za-z])\)|\b(?:answer|option|choice) (?:is )?([A-Za-z])\b(?=[\s.,;:!?)]|$)")


def _choice_index(answer: str, choices: Sequence[str]) -> int | None:
    """Which choice an answer names: a letter ("B", "(b)", "Option B: ...") or the choice's text."""
    texts = [normalize(str(c)) for c in choices]
    said = normalize(answer)
    if said in texts:
        return texts.index(said)
    match = _LETTER.match(answer.strip())
    if match:
        index = ord(match.group(1).lower()) - ord("a")
        rest = normalize(match.group(2))
        if 0 <= index < len(choices) and (not rest or rest == texts[index]):
            return index
    named = [i for i, t in enumerate(texts) if t and re.search(rf"(^|\s){re.escape(t)}($|\s)", said)]
    if named:
        return named[0] if len(named) == 1 else None  # several choices named: no answer
    letters = {(a or b).lower() for a, b in _LETTER_IN_TEXT.findall(answer)}
    if len(letters) == 1:
        index = ord(letters.pop()) - ord("a")
        return index if 0 <= index < len(choices) else None
    return None


@reward("mcq_accuracy")
def mcq_accuracy(completions: Sequence, choices: Sequence, answer: Sequence, **_) -> list[float]:
    """Multiple choice in the MMAU format: 1.0 when the completion picks the right choice, else 0.0.

    ``choices`` is each row's list of options, ``answer`` the right one as its text or its letter.
    The completion may answer with the letter or the text, inside ``<answer>`` tags or as its last
    sentence; naming several choices scores 0.

    >>> mcq_accuracy(["<answer>B</answer>", "It is a dog barking.", "(a) or (b)", "The answer is (B)."],
    ...              [["cat", "dog"], ["a cat", "a dog barking"], ["x", "y"], ["x", "y"]], ["dog", "B", "x", "y"])
    [1.0, 1.0, 0.0, 1.0]
    """
    scores = []
    for completion, options, gold in zip(completions, choices, answer, strict=True):
        options = list(options)
        gold_index = _choice_index(str(gold), options)
        if gold_index is None:
            raise ValueError(f"mcq_accuracy: answer '{gold}' is none of the choices {options}")
        text, tagged = answer_span(as_text(completion))
        picked = _choice_index(text, options)
        if picked is None and not tagged:  # the last sentence of a free-text answer
            sentences = [s for s in re.split(r"(?<=[.!?。])\s+", text.strip()) if s.strip()]
            picked = _choice_index(sentences[-1], options) if sentences else None
        scores.append(1.0 if picked == gold_index else 0.0)
    return scores
