"""ASR scoring: transcript normalisation, word/character/mixed error rates and the rewards built on them.

Normalisation is chosen by language code: English gets Whisper's normaliser (contractions, titles,
spelled-out numbers to digits, British to American spelling), Chinese a width/punctuation/numeral
normaliser, Japanese the same without numerals, anything else a generic one (lower case, no
punctuation or symbols, single spaces). With no language, text containing CJK characters is treated
as Chinese (Japanese if it has kana), anything else as generic.

Error rates count edits (substitutions + deletions + insertions) over reference units. The units are
words (``wer``), non-space characters (``cer``) or, for code-switched text, CJK characters plus
whole non-CJK words (``mer``, the "mixed error rate"; not jiwer's match error rate). ``auto`` uses
CER for Chinese/Japanese and WER otherwise.

The British-to-American spelling list ``data/english_spelling.json`` is Whisper's
``whisper/normalizers/english.json`` (openai-whisper 20250625, MIT licence, Copyright (c) 2022 OpenAI).
"""

from __future__ import annotations

import functools
import json
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources

import jiwer
from audiorl.rewards.registry import reward
from audiorl.rewards.text import answer_span, as_text, normalize

METRICS = ("auto", "wer", "cer", "mer")

# Ideographs, kana and the iteration/closing marks 々〆〇; one unit each in CER and MER.
_CJK = "\u3005-\u3007\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
_CJK_RE = re.compile(f"[{_CJK}]")
_KANA_RE = re.compile("[\u3040-\u30ff]")
_MIXED_UNIT = re.compile(rf"[{_CJK}]|[^\s{_CJK}]+")
_SPACE_BY_CJK = re.compile(rf"(?<=[{_CJK}])\s+|\s+(?=[{_CJK}])")

_ENGLISH = {"en", "eng", "english"}
_CHINESE = {"zh", "zho", "chi", "cmn", "yue", "chinese", "mandarin", "cantonese"}
_JAPANESE = {"ja", "jp", "jpn", "japanese"}


# ------------------------------------------------------------------------------------ normalisation
@functools.cache
def _english_normalizer():
    # Imported here: transformers takes seconds to import and only English needs it.
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    spelling = resources.files("audiorl.rewards").joinpath("data/english_spelling.json").read_text("utf-8")
    return EnglishTextNormalizer(json.loads(spelling))


_BRACKET_OPEN, _BRACKET_CLOSE = re.compile(r"[<\[]"), re.compile(r"[>\]]")


def _drop_bracketed(text: str) -> str:
    """Whisper's first steps done in linear time: what its bracket and parenthesis regexes remove is removed,
    unmatched openers become spaces (as Whisper makes them later) and whitespace runs one space (as at its end).

    On many unclosed ``<``, ``[`` or ``(``, or a long run of spaces, its regexes retry from every
    position (quadratic: ~1 minute per MB); after this pass they find nothing to retry.
    """
    out, pos = [], 0
    while (opener := _BRACKET_OPEN.search(text, pos)) is not None:  # [<\[][^>\]]*[>\]]
        closer = _BRACKET_CLOSE.search(text, opener.start() + 1)
        if closer is None:  # no later opener has a closer either
            break
        out.append(text[pos : opener.start()])
        pos = closer.end()
    text = "".join(out) + text[pos:].replace("<", " ").replace("[", " ")
    out, pos = [], 0
    while (start := text.find("(", pos)) >= 0:  # \(([^)]+?)\)
        end = text.find(")", start + 1)
        if end < 0:
            break
        if end == start + 1:  # "()": nothing inside, not removed
            out.append(text[pos : end + 1])
        else:
            out.append(text[pos:start])
        pos = end + 1
    return " ".join(("".join(out) + text[pos:].replace("(", " ")).split())


def _normalize_english(text: str) -> str:
    words = _english_normalizer()(_drop_bracketed(unicodedata.normalize("NFKC", text))).split()
    # Whisper's normaliser leaves a lone "." from "..." and the like; such words are not spoken.
    return " ".join(w for w in words if any(unicodedata.category(ch)[0] not in "PS" for ch in w))


_ZH_DIGITS = dict(zip("零〇一二两三四五六七八九", (0, 0, 1, 2, 2, 3, 4, 5, 6, 7, 8, 9)))
_ZH_UNITS = {"十": 10, "百": 100, "千": 1000}
_ZH_BIG = {"万": 10**4, "亿": 10**8}
# A numeral starts with a digit or 十 (so 万一 "in case" and 千万 "by all means" stay words).
_ZH_NUMBER = re.compile(
    r"[零〇一二两三四五六七八九十][零〇一二两三四五六七八九十百千万亿]*(?:点([零〇一二三四五六七八九]+))?"
)


# A positional numeral longer than this is not a spoken number: it is left as written. Without the
# bound, a chain such as 一万亿万亿... is a number of thousands of digits: int -> str then exceeds
# Python's 4300-digit limit (ValueError) and the big-integer arithmetic is quadratic.
_ZH_MAX_POSITIONAL = 32


def _zh_integer(run: str) -> str | None:
    """一百二十三 -> 123, 一二三 -> 123, 两千零五 -> 2005, 两千五 -> 2500; None when it is not one number."""
    if not any(ch in _ZH_UNITS or ch in _ZH_BIG for ch in run):
        # Read digit by digit (years, phone numbers); 两 is never such a digit (两个 "two of").
        return None if "两" in run else "".join(str(_ZH_DIGITS[ch]) for ch in run)
    if len(run) > _ZH_MAX_POSITIONAL:
        return None
    total = section = 0
    digit: int | None = None
    smallest, last_big, after_unit = 10**4, 0, 0  # units fall within a section; after_unit: the unit just read
    for ch in run:
        if ch in _ZH_DIGITS:
            if digit is not None:
                return None  # 三四百 "three or four hundred" is an estimate, not a number
            if _ZH_DIGITS[ch] == 0:
                after_unit = 0  # 两千零五: after a zero the last digit is a unit, 2005 not 2500
            else:
                digit = _ZH_DIGITS[ch]
        elif ch in _ZH_UNITS:
            unit = _ZH_UNITS[ch]
            if unit >= smallest or (digit is None and ch != "十"):
                return None
            section += (digit or 1) * unit
            digit, smallest, after_unit = None, unit, unit
        else:
            big = _ZH_BIG[ch]
            value = section + (digit or 0)
            if big == last_big or (value == 0 and total == 0):
                return None
            if big == 10**8:
                total = (total + value) * big
            else:
                total += value * big
            section, digit, smallest, last_big, after_unit = 0, None, 10**4, big, big
    if digit is not None and after_unit:
        digit *= after_unit // 10  # 两千五 is 2500 and 三万五 35000: a bare last digit is one unit down
    return str(total + section + (digit or 0))


def _zh_number(match: re.Match) -> str:
    whole, fraction = match.group(0), match.group(1)
    integer = _zh_integer(whole[: len(whole) - len(fraction) - 1] if fraction else whole)
    if integer is None:
        return whole
    return integer + ("." + "".join(str(_ZH_DIGITS[ch]) for ch in fraction) if fraction else "")


def _strip_cjk_text(text: str, numerals: bool) -> str:
    text = unicodedata.normalize("NFKC", text).lower()  # full width -> half width
    if numerals:
        text = _ZH_NUMBER.sub(_zh_number, text)
    text = re.sub(r"(?<!\d)\.|\.(?!\d)", " ", text)  # a point is kept only as a decimal point
    text = "".join(" " if ch != "." and unicodedata.category(ch)[0] in "PS" else ch for ch in text)
    return _SPACE_BY_CJK.sub("", " ".join(text.split()))


def _normalize_chinese(text: str) -> str:
    """NFKC (full to half width), lower case, numerals to digits, no punctuation or symbols, no spaces by CJK.

    Positional numerals become numbers (一百二十三 -> 123, 两千零五 -> 2005, colloquial 两千五 -> 2500,
    三点五 -> 3.5) and runs of bare digits are read digit by digit (一二三 -> 123, 二零二四 -> 2024).
    Numerals inside words change too (第一 -> 第1, 统一 -> 统1): both sides are normalised alike, so
    this only makes such spellings equal. Left as written: estimates (三四百), 两 with no unit (两个),
    words that start with 万/千/百 (万一, 千万), digits with Chinese units (3万) and traditional forms.
    """
    return _strip_cjk_text(text, numerals=True)


def _normalize_japanese(text: str) -> str:
    # No numeral conversion: kanji numerals are read and written differently in Japanese (一つ, 二十歳).
    return _strip_cjk_text(text, numerals=False)


_NORMALIZERS = {"en": _normalize_english, "zh": _normalize_chinese, "ja": _normalize_japanese, "other": normalize}


def _kind(language: str | None, text: str) -> str:
    """en, zh, ja or other, from a language code (en, en-US, zh_TW, cmn, ...) or, without one, the text."""
    if language:
        code = language.strip().lower().replace("_", "-")
        base = code.split("-")[0]
        for kind, codes in (("en", _ENGLISH), ("zh", _CHINESE), ("ja", _JAPANESE)):
            if code in codes or base in codes:
                return kind
        return "other"
    if _CJK_RE.search(text):
        return "ja" if _KANA_RE.search(text) else "zh"
    return "other"


def normalize_transcript(text: str, language: str | None = None) -> str:
    """The form transcripts are compared in, for ``language`` (a code such as en, zh-CN, ja; None: guess).

    >>> normalize_transcript("Mr. Smith can't pay twenty-five dollars for the colour TV!", "en")
    'mister smith can not pay $25 for the color tv'
    >>> normalize_transcript("我有一百二十三个苹果， 和 ＡＢＣ。")
    '我有123个苹果和abc'
    >>> normalize_transcript("Ça va?  Très bien!", "fr")
    'ça va très bien'
    """
    return _NORMALIZERS[_kind(language, text)](text)


# ------------------------------------------------------------------------------------ error rates
@dataclass
class ErrorCounts:
    """Edit counts over one or more utterances; ``rate`` is total edits / total reference units.

    With no reference units the rate is 0.0 if there are no edits either, else 1.0.
    """

    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    reference_units: int = 0
    utterances: int = 0
    metric: str = "wer"
    rate: float = field(init=False)

    def __post_init__(self) -> None:
        if self.reference_units:
            self.rate = self.edits / self.reference_units
        else:
            self.rate = 0.0 if self.edits == 0 else 1.0

    @property
    def edits(self) -> int:
        return self.substitutions + self.deletions + self.insertions


def units(text: str, metric: str) -> list[str]:
    """The units a normalised text is scored in: words (wer), non-space characters (cer) or both (mer).

    >>> units("我爱 python 3", "mer")
    ['我', '爱', 'python', '3']
    """
    if metric == "wer":
        return text.split()
    if metric == "cer":
        return [ch for ch in text if not ch.isspace()]
    if metric == "mer":
        return _MIXED_UNIT.findall(text)
    raise ValueError(f"metric must be one of {', '.join(METRICS[1:])}, got {metric!r}")


def _edits(ref: list[str], hyp: list[str]) -> tuple[int, int, int]:
    if not ref or not hyp:  # jiwer refuses empty references
        return 0, len(ref), len(hyp)
    # Units never hold whitespace, so joining with spaces and letting jiwer split again is lossless.
    out = jiwer.process_words(" ".join(ref), " ".join(hyp))
    return out.substitutions, out.deletions, out.insertions


def _metric_for(metric: str, kind: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "auto":
        return "cer" if kind in ("zh", "ja") else "wer"
    return metric


def _compare(reference: str, hypothesis: str, language: str | None, metric: str) -> tuple[ErrorCounts, int, bool]:
    """(counts, hypothesis units, normalised texts equal); the reference decides the normaliser."""
    kind = _kind(language, reference)
    metric = _metric_for(metric, kind)
    ref, hyp = _NORMALIZERS[kind](reference), _NORMALIZERS[kind](hypothesis)
    ref_units, hyp_units = units(ref, metric), units(hyp, metric)
    counts = ErrorCounts(*_edits(ref_units, hyp_units), len(ref_units), 1, metric)
    return counts, len(hyp_units), ref == hyp


def error_rate(reference: str, hypothesis: str, language: str | None = None, metric: str = "auto") -> float:
    """Edits / reference units of one utterance (may exceed 1); an empty reference gives 0.0 or 1.0.

    >>> error_rate("the cat sat on the mat", "the cat sat on a mat")
    0.16666666666666666
    >>> error_rate("今天天气很好", "今天天气不好。")
    0.16666666666666666
    >>> error_rate("我爱 Python", "我爱 Java", metric="mer"), error_rate("", ""), error_rate("", "uh")
    (0.3333333333333333, 0.0, 1.0)
    """
    return _compare(reference, hypothesis, language, metric)[0].rate


def corpus_error_rate(
    references: Sequence[str],
    hypotheses: Sequence[str],
    language: str | Sequence[str | None] | None = None,
    metric: str = "auto",
) -> ErrorCounts:
    """Total edits / total reference units over a corpus (not the mean of per-utterance rates).

    ``language`` is one code for all, one per utterance, or None (guessed from each reference).
    ``auto`` gives CER if every utterance is Chinese/Japanese, WER if none is, MER for a mix.

    >>> result = corpus_error_rate(["the cat sat", "hello"], ["the cat sat down", "yellow"])
    >>> result.rate, result.substitutions, result.insertions, result.reference_units, result.metric
    (0.5, 1, 1, 4, 'wer')
    """
    n = len(references)
    if len(hypotheses) != n:
        raise ValueError(f"corpus_error_rate: {n} references but {len(hypotheses)} hypotheses")
    languages = _per_row("corpus_error_rate", language, n)
    for i, (ref, hyp) in enumerate(zip(references, hypotheses)):
        for what, text in (("reference", ref), ("hypothesis", hyp)):
            if not isinstance(text, str):
                raise ValueError(f"corpus_error_rate: {what} {i} must be text, got {type(text).__name__}")
    if metric not in METRICS:
        raise ValueError(f"corpus_error_rate: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric == "auto":
        cjk = {_kind(lang, ref) in ("zh", "ja") for ref, lang in zip(references, languages)}
        metric = "mer" if len(cjk) == 2 else "cer" if cjk == {True} else "wer"
    each = [_compare(ref, hyp, lang, metric)[0] for ref, hyp, lang in zip(references, hypotheses, languages)]
    return ErrorCounts(
        substitutions=sum(c.substitutions for c in each),
        deletions=sum(c.deletions for c in each),
        insertions=sum(c.insertions for c in each),
        reference_units=sum(c.reference_units for c in each),
        utterances=n,
        metric=metric,
    )


# ------------------------------------------------------------------------------------ rewards
def _per_row(name: str, language: object, n: int) -> list[str | None]:
    if language is None or isinstance(language, str):
        return [language or None] * n
    languages = list(language)
    if len(languages) != n:
        raise ValueError(f"{name}: {len(languages)} languages for {n} rows")
    for i, lang in enumerate(languages):
        if lang is not None and not isinstance(lang, str):
            raise ValueError(f"{name}: row {i} has language {lang!r}; expected a code such as 'en' or 'zh'")
    return [lang or None for lang in languages]


def _compare_rows(name, completions, transcript, language, metric):
    n = len(completions)
    if len(transcript) != n:
        raise ValueError(f"{name}: {len(transcript)} transcripts for {n} completions")
    if metric not in METRICS:
        raise ValueError(f"{name}: metric must be one of {', '.join(METRICS)}, got {metric!r}")
    languages = _per_row(name, language, n)
    results = []
    for i, (completion, ref, lang) in enumerate(zip(completions, transcript, languages)):
        if not isinstance(ref, str):
            got = "no transcript" if ref is None else f"a {type(ref).__name__} transcript, not text"
            raise ValueError(f"{name}: row {i} has {got}")
        hypothesis, _ = answer_span(as_text(completion))
        results.append(_compare(ref, hypothesis, lang, metric))
    return results


@reward("asr_correctness")
def asr_correctness(
    completions: Sequence,
    transcript: Sequence,
    language: str | Sequence | None = None,
    metric: str = "auto",
    exact_bonus: float = 0.0,
    **_,
) -> list[float]:
    """1 - error rate, clipped to [0, 1], plus ``exact_bonus`` when the normalised texts are equal.

    Values lie in [0, 1 + exact_bonus]. The hypothesis is the ``<answer>`` block if there is one,
    else the text after the thinking. ``metric``: auto (CER for Chinese/Japanese, else WER), wer,
    cer or mer. ``language``: a column of codes, one code for every row, or None (guessed).

    >>> asr_correctness(["<answer>The cat sat.</answer>", "the dog sat"], ["the cat sat", "the cat sat"])
    [1.0, 0.6666666666666667]
    >>> asr_correctness(["<think>hm</think>It's 25.", "一二三"], ["it is twenty five", "123"], ["en", "zh"], exact_bonus=0.5)
    [1.5, 1.5]
    """
    bonus = float(exact_bonus)
    if not math.isfinite(bonus) or bonus < 0:
        raise ValueError(f"asr_correctness: exact_bonus must be a finite number >= 0, got {exact_bonus!r}")
    scores = []
    for counts, _, exact in _compare_rows("asr_correctness", completions, transcript, language, metric):
        scores.append(min(1.0, max(0.0, 1.0 - counts.rate)) + (bonus if exact else 0.0))
    return scores


@reward("asr_edit_distance")
def asr_edit_distance(
    completions: Sequence,
    transcript: Sequence,
    language: str | Sequence | None = None,
    metric: str = "auto",
    normalized: bool = False,
    **_,
) -> list[float]:
    """Minus the edit distance in the metric's units (words, characters or both); 0.0 is a perfect transcript.

    Values are <= 0 and >= -max(reference units, hypothesis units); with ``normalized`` the distance
    is divided by that maximum, so values lie in [-1, 0].

    >>> asr_edit_distance(["the cat sat down", "今天天气"], ["the cat sat", "今天天气很好"])
    [-1.0, -2.0]
    >>> asr_edit_distance(["the cat sat down", "今天天气"], ["the cat sat", "今天天气很好"], normalized=True)
    [-0.25, -0.3333333333333333]
    """
    scores = []
    for counts, hyp_units, _ in _compare_rows("asr_edit_distance", completions, transcript, language, metric):
        scale = max(counts.reference_units, hyp_units, 1) if normalized else 1
        scores.append(-counts.edits / scale)
    return scores
