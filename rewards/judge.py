"""``llm_judge``: a generative reward model, an LLM that grades completions over an OpenAI-compatible API.

StepAudio 2.5 scores TTS and real-time dialogue with generative reward models; this reward asks
any chat-completions endpoint (a vLLM OpenAI server by default, ``http://localhost:8000/v1``) to
judge each completion:

* ``mode: pointwise``: a rubric, the prompt and the completion; the judge ends with a score on
  ``scale`` (``[1, 10]``); the reward is ``(score - min) / (max - min)`` in [0, 1].
* ``mode: pairwise``: the completion against the ``reference_column`` ("reference"); the judge
  answers ``[[A]]``, ``[[B]]`` or ``[[C]]`` (tie). With ``swap`` (default) it is asked in both orders
  and the two verdicts averaged, which cancels the judge's position bias; 1 = the completion is
  better, 0.5 = tie, 0 = the reference is better (one order's verdict alone if the other's is unparsable).

``rubric`` is a built-in name (:data:`RUBRICS`), free criteria text set into the built-in frame,
or a whole template: ``{prompt}``, ``{completion}``, ``{reference}``, ``{min}``, ``{max}`` in
pointwise mode; ``{prompt}``, ``{a}``, ``{b}`` in pairwise mode (the two answers in the order
shown, which swapping changes). Literal braces are written ``{{ }}``.

Parsing never raises: only the text after a ``</think>`` counts; a score stated out of the scale
is clipped to it (``out_of_range: clip``) or treated as unparsable (``reject``); an answer with no
score gives ``None`` ("not applicable"), 0.0 or an error (``on_unparsable: none | zero | raise``).
Unparsable answers are counted in :attr:`Judge.stats` and logged with a snippet. ``guided``
constrains the answer on the server instead (``true``/``regex``: vLLM's ``structured_outputs``;
``json_schema``: the OpenAI ``response_format``, also served by vLLM): always parseable, but the
judge cannot reason before it answers.

Requests run concurrently (``concurrency``), with ``retries`` and exponential backoff on
connection errors, timeouts, 5xx and 429 (honouring ``Retry-After``), never on other 4xx. Answers
are cached in memory per judge configuration and, with ``cache_path`` (``.jsonl``, or ``.sqlite``
/ ``.db``), on disk across runs; identical requests in a batch are sent once. The API key comes
from the environment variable ``api_key_env`` and appears in no log, error, cache file or repr.
After an endpoint failure, calls within the next 30 s fail at once with the same error: callers
that retry sample by sample (RewardSet locating a failing sample) do not wait out every timeout again.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import json
import logging
import math
import os
import re
import sqlite3
import string
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from audiorl.common.errors import ConfigError, RewardError, nearest
from audiorl.rewards.registry import REWARDS
from audiorl.rewards.text import strip_thinking

log = logging.getLogger(__name__)

NAME = "llm_judge"
DEFAULT_BASE_URL = "http://localhost:8000/v1"
MODES = ("pointwise", "pairwise")
ON_UNPARSABLE = ("none", "zero", "raise")
OUT_OF_RANGE = ("clip", "reject")
GUIDED = ("regex", "json_schema")
SQLITE_SUFFIXES = (".sqlite", ".sqlite3", ".db")
FAIL_FAST_S = 30.0  # after an endpoint failure, calls this soon after fail at once
MAX_WAIT_S = 60.0  # longest backoff or Retry-After honoured
MEMORY_CACHE_ENTRIES = 200_000

# ------------------------------------------------------------------ rubrics
RUBRICS: dict[str, str] = {
    "helpfulness": (
        "Judge how helpful the response is: whether it correctly and completely answers the user's request, "
        "stays relevant and is clear. Penalise factual errors, evasions and padding."
    ),
    "correctness": (
        "Judge whether the response's final answer is correct. If a reference answer is given, compare with it; "
        "reasoning style does not matter, only whether the answer is right."
    ),
    "tts_naturalness": (
        "The response will be read aloud by a text-to-speech voice. Judge how natural it would sound when "
        "spoken: conversational wording, sentence lengths that suit speech, no markdown, tables, lists, URLs, "
        "emoji or symbols a voice cannot read, and numbers and abbreviations written the way they are said."
    ),
    "dialogue": (
        "The response is the assistant's turn in a real-time spoken conversation. Judge whether it responds "
        "appropriately to what the user said, keeps the conversation natural and flowing, is as concise as "
        "spoken dialogue should be, and has a fitting tone and empathy."
    ),
}

_POINTWISE_HEAD = "Please act as an impartial judge and rate the quality of the response below.\n"
_POINTWISE_BODY = "\n\n[Prompt]\n{prompt}\n\n[Response]\n{completion}\n"
_POINTWISE_REFERENCE = "\n[Reference answer (one good answer; others may be as good)]\n{reference}\n"
_POINTWISE_TAIL = (
    "\nRate the response on a scale from {min} (worst) to {max} (best). You may explain briefly first; "
    'then end with a final line of the form "Score: N".'
)
_PAIRWISE_HEAD = "Please act as an impartial judge and compare the two responses to the prompt below.\n"
_PAIRWISE_BODY = (
    "\nDo not let the order of the responses or their length influence you."
    "\n\n[Prompt]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n"
    "\nYou may explain briefly first; then end with your final verdict, strictly "
    '"[[A]]" if A is better, "[[B]]" if B is better, or "[[C]]" for a tie.'
)

FIELDS = {"pointwise": ("prompt", "completion", "reference", "min", "max"), "pairwise": ("prompt", "a", "b")}
REQUIRED_FIELDS = {"pointwise": ("completion",), "pairwise": ("a", "b")}


def _escape(text: str) -> str:
    return text.replace("{", "{{").replace("}", "}}")


def template_fields(template: str) -> set[str]:
    """The fields a format template names. Raises ConfigError for a template ``str.format`` cannot read.

    >>> sorted(template_fields("Rate {completion} for {prompt} ({{literal}})"))
    ['completion', 'prompt']
    """
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        raise ConfigError(
            f"reward '{NAME}': the rubric template is not a valid format string ({exc}); "
            "write literal braces as '{{' and '}}'"
        ) from None
    return {name for _, name, _, _ in parsed if name is not None}


def rubric_template(rubric: str, mode: str, with_reference: bool = False) -> str:
    """The user-message template for ``rubric`` in ``mode``. Raises ConfigError for unknown names or fields.

    >>> "{completion}" in rubric_template("helpfulness", "pointwise")
    True
    >>> rubric_template("Say {who}", "pointwise")
    Traceback (most recent call last):
    ...
    audiorl.common.errors.ConfigError: reward 'llm_judge': the rubric template names unknown field(s) {who}; pointwise templates may use {prompt}, {completion}, {reference}, {min}, {max}
    """
    if not isinstance(rubric, str) or not rubric.strip():
        raise ConfigError(
            f"reward '{NAME}': rubric must be a built-in name ({', '.join(RUBRICS)}) or a template string"
        )
    if rubric in RUBRICS or "{" not in rubric and "}" not in rubric:
        if rubric not in RUBRICS and re.fullmatch(r"[\w\-]+", rubric):
            raise ConfigError(
                f"reward '{NAME}': unknown rubric '{rubric}'{nearest(rubric, RUBRICS)}; built-in rubrics: "
                f"{', '.join(RUBRICS)}; or give criteria text, or a template with {{prompt}} and {{completion}}"
            )
        criteria = _escape(RUBRICS.get(rubric, rubric).strip())
        if mode == "pairwise":
            return _PAIRWISE_HEAD + criteria + _PAIRWISE_BODY
        return (
            _POINTWISE_HEAD
            + criteria
            + _POINTWISE_BODY
            + (_POINTWISE_REFERENCE if with_reference else "")
            + _POINTWISE_TAIL
        )
    fields = template_fields(rubric)
    allowed, required = FIELDS[mode], REQUIRED_FIELDS[mode]
    unknown = sorted(fields - set(allowed))
    if unknown:
        hint = ""
        if mode == "pairwise" and set(unknown) & {"completion", "reference"}:
            hint = " (pairwise templates show the two answers as {a} and {b}: swapping changes which is which)"
        raise ConfigError(
            f"reward '{NAME}': the rubric template names unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
            f"{mode} templates may use {', '.join('{' + f + '}' for f in allowed)}{hint}"
        )
    missing = [f for f in required if f not in fields]
    if missing:
        raise ConfigError(
            f"reward '{NAME}': the {mode} rubric template must contain {', '.join('{' + f + '}' for f in missing)}, "
            "or the judge never sees the answer"
        )
    return rubric


# ------------------------------------------------------------------ parsing
_NUM = r"[-+]?[0-9]+(?:\.[0-9]+)?(?![0-9]|\.[0-9]|[eE][-+]?[0-9])"
_MARKS = r"[\s*_`\"'\[\]()]*"
_SEP = r"(?:[\s*_`\"'\[\]():=]|\bis\b|\bof\b|\bwas\b)*"
_PARSED_CHARS = 20_000  # judges end with their grade: only the tail of a very long answer is searched
_JSON_OBJECT = re.compile(r"\{[^{}]{0,2000}\}")
_BRACKETED = re.compile(rf"\[\[\s*({_NUM})\s*(?:/\s*({_NUM})\s*)?\]\]")
_LABELLED = re.compile(
    rf"\b(?:score|rating|grade)\b{_SEP}({_NUM}){_MARKS}(?:(?:/|\bout\s+of\b)\s*({_NUM}))?",
    re.IGNORECASE,
)
_FRACTION = re.compile(rf"({_NUM})\s*(?:/|\bout\s+of\b)\s*({_NUM})", re.IGNORECASE)
_BOLD = re.compile(rf"\*\*\s*({_NUM})\s*\*\*")
_BARE = re.compile(_NUM)
_SCORE_KEYS = ("score", "rating", "grade")
_VERDICT_KEYS = ("verdict", "winner", "better", "choice")
_VERDICT_BRACKETED = re.compile(r"\[\[\s*([ABCabc])\s*\]\]")
_VERDICT_LABELLED = re.compile(
    r"(?i:\b(?:final\s+)?(?:verdict|winner)\b)\s*(?i:is|:|=)?[\s*_`\"'\[(]*(?i:(?:response|answer|assistant|output)\s+)?((?i:tie)|[ABC])\b"
)
_VERDICT_WORDS = {"a": "A", "b": "B", "c": "C", "tie": "C"}


def answer_text(text: object) -> str:
    """The part of a judge's answer that is parsed: what follows its reasoning (``</think>``)."""
    return strip_thinking(text if isinstance(text, str) else "" if text is None else str(text))[-_PARSED_CHARS:]


def _number(raw: object) -> float | None:
    if isinstance(raw, bool) or raw is None:
        return None
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _json_field(text: str, keys: Sequence[str]) -> Any:
    for match in reversed(_JSON_OBJECT.findall(text)):
        try:
            obj = json.loads(match)
        except (ValueError, RecursionError):
            continue
        if isinstance(obj, dict):
            lowered = {str(k).lower(): v for k, v in obj.items()}
            for key in keys:
                if key in lowered:
                    return lowered[key]
    return None


def _stated_score(text: str) -> tuple[float | None, float | None] | None:
    """(score, denominator) as the judge wrote them, or None."""
    raw = _json_field(text, _SCORE_KEYS)
    if raw is not None:
        return _number(raw), None
    for pattern in (_BRACKETED, _LABELLED, _FRACTION):
        matches = pattern.findall(text)
        if matches:
            value, denominator = matches[-1]
            return _number(value), _number(denominator) if denominator else None
    bold = _BOLD.findall(text)
    if bold:
        return _number(bold[-1]), None
    bare = _BARE.fullmatch(text.strip().strip("*_`\"'[]().").strip())
    if bare:
        return _number(bare.group(0)), None
    return None


def parse_score(text: object, scale: Sequence[float] = (1, 10), out_of_range: str = "clip") -> float | None:
    """The score a judge's answer gives on ``scale``, or None when it gives none. Never raises.

    Read after any ``</think>``, in this order: a JSON ``{"score": N}``, ``[[N]]``, a labelled
    ``Score/Rating/Grade: N`` (the last one), ``N/M`` or ``N out of M``, a bold ``**N**``, a bare
    number. A score stated out of another maximum (``3 out of 5`` on a 1-10 scale) is rescaled
    proportionally (to 6). Out-of-scale scores are clipped, or give None with ``out_of_range="reject"``.

    >>> [parse_score(t) for t in ["Score: 7", "7/10", "**8**", '{"score": 9}', "<think>Score: 2</think>[[4]]"]]
    [7.0, 7.0, 8.0, 9.0, 4.0]
    >>> parse_score("Rating: 3 out of 5", scale=(1, 5)), parse_score("Score: 12"), parse_score("Score: 12", out_of_range="reject")
    (3.0, 10.0, None)
    >>> parse_score("I cannot rate this.") is None
    True
    """
    lo, hi = float(scale[0]), float(scale[1])
    stated = _stated_score(answer_text(text))
    if stated is None or stated[0] is None:
        return None
    value, denominator = stated
    if denominator is not None and denominator != hi:
        if denominator <= 0:
            return None
        value = value / denominator * hi
        if not math.isfinite(value):
            return None
    if lo <= value <= hi:
        return value
    if out_of_range == "reject":
        return None
    return min(max(value, lo), hi)


def parse_verdict(text: object) -> str | None:
    """``"A"``, ``"B"`` or ``"C"`` (tie) from a pairwise judge's answer, or None. Never raises.

    Read after any ``</think>``: JSON ``{"verdict": "A"}``, the last ``[[A]]``, a labelled
    ``Verdict: B`` / ``Winner: Response A``, or an answer that is only the letter (or "tie").

    >>> [parse_verdict(t) for t in ["[[A]]", "so [[B]]", '{"verdict": "tie"}', "Final verdict: Response B", "C.", "maybe"]]
    ['A', 'B', 'C', 'B', 'C', None]
    """
    text = answer_text(text)
    raw = _json_field(text, _VERDICT_KEYS)
    if isinstance(raw, str):
        word = raw.strip().strip("[]() ").lower()
        if word in _VERDICT_WORDS:
            return _VERDICT_WORDS[word]
    for pattern in (_VERDICT_BRACKETED, _VERDICT_LABELLED):
        matches = pattern.findall(text)
        if matches:
            return _VERDICT_WORDS[matches[-1].lower()]
    word = text.strip().strip("[]()*_`\"'.!: \n\t").lower()
    return _VERDICT_WORDS.get(word)


def _snippet(text: object, limit: int = 80) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------ inputs
def _content_text(content: object) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, (list, tuple)):
        parts = []
        for part in content:
            if isinstance(part, dict):
                kind = part.get("type", "text")
                parts.append(str(part.get("text", "")) if kind == "text" else f"[{kind}]")
            else:
                parts.append(str(part))
        return " ".join(p for p in parts if p)
    return "" if content is None else str(content)


def render(value: object) -> str:
    """A prompt, completion or reference as plain text; chat messages become ``role: text`` lines.

    >>> render([{"role": "user", "content": [{"type": "audio", "audio": "a.wav"}, {"type": "text", "text": "Hi"}]}])
    'user: [audio] Hi'
    """
    if isinstance(value, dict):
        return _content_text(value.get("content", ""))
    if isinstance(value, (list, tuple)) and value and all(isinstance(m, dict) and "role" in m for m in value):
        return "\n".join(f"{m['role']}: {_content_text(m.get('content', ''))}" for m in value)
    if isinstance(value, (list, tuple)):
        return " / ".join(render(v) for v in value)
    return "" if value is None else str(value)


# ------------------------------------------------------------------ caches
class DiskCache:
    """Judge answers by request key in a ``.jsonl`` file (one appended line per answer, whole-line
    writes, truncated lines skipped on load) or a sqlite file (``.sqlite``, ``.sqlite3``, ``.db``).
    Several processes may append to the same file."""

    def __init__(self, path: str):
        self.path = os.path.abspath(os.path.expanduser(path))
        self.kind = "sqlite" if self.path.lower().endswith(SQLITE_SUFFIXES) else "jsonl"
        if self.kind == "jsonl" and not self.path.lower().endswith(".jsonl"):
            raise ConfigError(
                f"reward '{NAME}': cache_path '{path}' must end in .jsonl or {', '.join(SQLITE_SUFFIXES)}"
            )
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        self._lock = threading.Lock()
        self._entries: dict[str, str] = {}
        self._db: sqlite3.Connection | None = None
        try:
            if self.kind == "sqlite":
                self._connection()
            elif os.path.exists(self.path):
                self._load_jsonl()
        except (OSError, sqlite3.Error) as exc:
            raise ConfigError(f"reward '{NAME}': cannot use cache_path '{path}': {exc}") from None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS judge_cache (key TEXT PRIMARY KEY, answer TEXT NOT NULL, info TEXT)"
            )
            self._db.commit()
        return self._db

    def _load_jsonl(self) -> None:
        with open(self.path, encoding="utf-8", errors="replace") as f:
            for line in f:
                try:
                    entry = json.loads(line)
                    self._entries[str(entry["key"])] = str(entry["answer"])
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a crash

    def __len__(self) -> int:
        if self.kind == "sqlite":
            with self._lock:
                return int(self._connection().execute("SELECT COUNT(*) FROM judge_cache").fetchone()[0])
        return len(self._entries)

    def get(self, key: str) -> str | None:
        if self.kind == "jsonl":
            return self._entries.get(key)
        with self._lock:
            row = self._connection().execute("SELECT answer FROM judge_cache WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def put(self, key: str, answer: str, info: Mapping[str, Any]) -> None:
        with self._lock:
            if self.kind == "sqlite":
                db = self._connection()
                db.execute(
                    "INSERT OR REPLACE INTO judge_cache (key, answer, info) VALUES (?, ?, ?)",
                    (key, answer, json.dumps(dict(info))),
                )
                db.commit()
                return
            line = json.dumps({"key": key, **info, "answer": answer}, ensure_ascii=False) + "\n"
            # One write() of the whole line on an O_APPEND descriptor: lines from other processes do not interleave.
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, line.encode("utf-8"))
            finally:
                os.close(fd)
            self._entries[key] = answer

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# ------------------------------------------------------------------ the judge
class JudgeEndpointError(RewardError):
    """The judge endpoint could not be reached or kept failing after the retries."""


@dataclass
class JudgeStats:
    requests: int = 0  # HTTP requests sent, retries and model look-ups included
    answers: int = 0  # judge answers received from the endpoint
    cache_hits: int = 0  # judge calls answered from the memory or disk cache
    deduplicated: int = 0  # judge calls that repeated another one in the same batch
    unparsable: int = 0  # answers that gave no score or verdict


async def _sleep(seconds: float) -> None:  # the one place retries wait (tests replace it)
    await asyncio.sleep(seconds)


def _retry_after(headers: Mapping[str, str]) -> float:
    value = _number(headers.get("retry-after"))
    return 0.0 if value is None or value < 0 else min(value, MAX_WAIT_S)


@functools.lru_cache(maxsize=1)
def _ssl_context() -> Any:
    # httpx builds a new SSL context for every client (~50 ms); one per process is enough.
    import httpx

    return httpx.create_ssl_context()


def _run_sync(coro: Any) -> Any:
    """Run ``coro`` to completion from synchronous code, also when this thread already runs an event loop."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix=NAME) as pool:
        return pool.submit(asyncio.run, coro).result()


class Judge:
    """An LLM judge's grade of each completion in [0, 1] (None: no grade in its answer); keeps caches and counters.

    Call it like the reward (``judge(completions, prompts, **columns)``) or await :meth:`ascore`.
    Options are checked here and raise ConfigError naming the reward.
    """

    def __init__(
        self,
        *,
        mode: str = "pointwise",
        rubric: str = "helpfulness",
        base_url: str = DEFAULT_BASE_URL,
        model: str | None = None,
        scale: Sequence[float] = (1, 10),
        reference_column: str = "reference",
        swap: bool = True,
        guided: bool | str = False,
        on_unparsable: str = "none",
        out_of_range: str = "clip",
        strip_think: bool = True,
        system: str | None = None,
        temperature: float = 0.0,
        max_tokens: int = 512,
        extra_body: Mapping[str, Any] | None = None,
        concurrency: int = 8,
        retries: int = 3,
        backoff: float = 0.5,
        timeout: float = 60.0,
        cache: bool = True,
        cache_path: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
    ):
        def fail(message: str) -> ConfigError:
            return ConfigError(f"reward '{NAME}': {message}")

        if mode not in MODES:
            raise fail(f"mode must be one of {', '.join(MODES)}, got {mode!r}{nearest(str(mode), MODES)}")
        self.mode = mode
        self.rubric = rubric
        self.templates = {
            False: rubric_template(rubric, mode),
            True: rubric_template(rubric, mode, with_reference=True),
        }
        if not isinstance(base_url, str) or not re.match(r"https?://[^/\s]+", base_url):
            raise fail(f"base_url must be an http(s) URL such as {DEFAULT_BASE_URL}, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        if model is not None and (not isinstance(model, str) or not model):
            raise fail(f"model must be the served model's name, got {model!r}")
        self.model = model
        if (
            not isinstance(scale, (list, tuple))
            or len(scale) != 2
            or any(isinstance(v, bool) or _number(v) is None for v in scale)
            or not float(scale[0]) < float(scale[1])
            or not math.isfinite(float(scale[1]) - float(scale[0]))
        ):
            raise fail(f"scale must be [min, max] with min < max, got {scale!r}")
        self.scale = tuple(int(v) if v.is_integer() else v for v in (float(scale[0]), float(scale[1])))
        if not isinstance(reference_column, str) or not reference_column:
            raise fail(f"reference_column must be a column name, got {reference_column!r}")
        self.reference_column = reference_column
        self.swap = bool(swap)
        if guided is True:
            guided = "regex"
        if guided not in (False, None, *GUIDED):
            raise fail(f"guided must be false, true, or one of {', '.join(GUIDED)}, got {guided!r}")
        self.guided = guided or None
        if on_unparsable not in ON_UNPARSABLE:
            raise fail(f"on_unparsable must be one of {', '.join(ON_UNPARSABLE)}, got {on_unparsable!r}")
        self.on_unparsable = on_unparsable
        if out_of_range not in OUT_OF_RANGE:
            raise fail(f"out_of_range must be one of {', '.join(OUT_OF_RANGE)}, got {out_of_range!r}")
        self.out_of_range = out_of_range
        self.strip_think = bool(strip_think)
        self.system = system or None
        self.temperature = _number(temperature)
        if self.temperature is None or self.temperature < 0:
            raise fail(f"temperature must be >= 0, got {temperature!r}")
        if not isinstance(max_tokens, int) or isinstance(max_tokens, bool) or max_tokens < 1:
            raise fail(f"max_tokens must be a positive integer, got {max_tokens!r}")
        self.max_tokens = max_tokens
        if extra_body is not None and not isinstance(extra_body, Mapping):
            raise fail(f"extra_body must be a mapping of request fields, got {type(extra_body).__name__}")
        self.extra_body = dict(extra_body or {})
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise fail(f"concurrency must be a positive integer, got {concurrency!r}")
        self.concurrency = concurrency
        if not isinstance(retries, int) or isinstance(retries, bool) or retries < 0:
            raise fail(f"retries must be an integer >= 0, got {retries!r}")
        self.retries = retries
        self.backoff = _number(backoff)
        if self.backoff is None or self.backoff < 0:
            raise fail(f"backoff must be >= 0 seconds, got {backoff!r}")
        self.timeout = _number(timeout)
        if self.timeout is None or self.timeout <= 0:
            raise fail(f"timeout must be > 0 seconds, got {timeout!r}")
        if not isinstance(api_key_env, str) or not api_key_env:
            raise fail(f"api_key_env must name an environment variable, got {api_key_env!r}")
        self.api_key_env = api_key_env
        self.use_cache = bool(cache)
        self.disk = DiskCache(cache_path) if cache_path else None
        self.stats = JudgeStats()
        self._memory: dict[str, str] = {}
        self._down: tuple[float, str] | None = None

    def __repr__(self) -> str:
        rubric = self.rubric if self.rubric in RUBRICS else "custom"
        return (
            f"Judge(mode={self.mode!r}, rubric={rubric!r}, base_url={self.base_url!r}, model={self.model!r}, "
            f"guided={self.guided!r}, api_key_env={self.api_key_env!r})"
        )

    # -------------------------------------------------------------- calling
    def __call__(
        self, completions: Sequence, prompts: Sequence | None = None, **columns: Sequence
    ) -> list[float | None]:
        return _run_sync(self.ascore(completions, prompts, **columns))

    async def ascore(
        self, completions: Sequence, prompts: Sequence | None = None, **columns: Sequence
    ) -> list[float | None]:
        """One value per completion in [0, 1], or None where the judge's answer was unparsable."""
        n = len(completions)
        for key, values in columns.items():
            column_like = (
                hasattr(values, "__len__")
                and hasattr(values, "__getitem__")
                and not isinstance(values, (str, bytes, Mapping))
            )
            if not column_like or len(values) != n:
                count = len(values) if column_like else None
                raise ConfigError(
                    f"reward '{NAME}' got {key}={_snippet(repr(values), 40)}"
                    + (f" ({count} values for {n} completions)" if count is not None else "")
                    + f": not an option of the reward{nearest(key, _OPTIONS)} and not a dataset column"
                )
        if prompts is not None and len(prompts) != n:
            raise ValueError(f"reward '{NAME}': {len(prompts)} prompts for {n} completions")
        references = columns.get(self.reference_column)
        template = self.templates[references is not None]
        if references is None and (self.mode == "pairwise" or "reference" in template_fields(template)):
            raise ConfigError(
                f"reward '{NAME}' ({self.mode}) needs the column '{self.reference_column}' (reference_column); "
                f"columns given: {', '.join(sorted(columns)) or '(none)'}"
            )
        if n == 0:
            return []
        self._fail_fast()

        import httpx  # here, not at import: only this reward needs it

        headers = self._headers()
        limits = httpx.Limits(max_connections=self.concurrency, max_keepalive_connections=self.concurrency)
        async with httpx.AsyncClient(
            timeout=self.timeout, limits=limits, headers=headers, verify=_ssl_context()
        ) as client:
            model = await self._resolve_model(client)
            calls = self._calls(model, template, completions, prompts, references)
            answers = await self._answers(client, model, calls)
        return self._scores(calls, answers, completions)

    def _headers(self) -> dict[str, str]:
        key = os.environ.get(self.api_key_env)
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _scrub(self, message: str) -> str:
        key = os.environ.get(self.api_key_env)
        return message.replace(key, "***") if key else message

    def _fail_fast(self) -> None:
        if self._down is not None:
            since, message = self._down
            ago = time.monotonic() - since
            if ago < FAIL_FAST_S:
                raise JudgeEndpointError(f"{message} (not retried: it failed {ago:.0f} s ago)")
            self._down = None

    # -------------------------------------------------------------- requests
    def _body(self, model: str, text: str) -> dict[str, Any]:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + [
            {"role": "user", "content": text}
        ]
        body: dict[str, Any] = {
            "model": model,
            "messages": messages,
            "temperature": self.temperature,
            "max_tokens": self.max_tokens,
        }
        body.update(self._guided_fields())
        body.update(self.extra_body)
        return body

    def _guided_fields(self) -> dict[str, Any]:
        if self.guided == "regex":
            return {"structured_outputs": {"regex": self.answer_regex()}}
        if self.guided == "json_schema":
            return {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "judgement", "schema": self.answer_schema(), "strict": True},
                }
            }
        return {}

    def _integer_scale(self) -> list[int] | None:
        lo, hi = self.scale
        if float(lo).is_integer() and float(hi).is_integer() and float(hi) - float(lo) <= 100:
            return list(range(int(lo), int(hi) + 1))
        return None

    def answer_regex(self) -> str:
        """The regular expression ``guided: regex`` holds the judge's whole answer to.

        >>> Judge(scale=[1, 3]).answer_regex(), Judge(mode="pairwise").answer_regex()
        ('Score: (?:1|2|3)', '\\\\[\\\\[(?:A|B|C)\\\\]\\\\]')
        """
        if self.mode == "pairwise":
            return r"\[\[(?:A|B|C)\]\]"
        values = self._integer_scale()
        if values is not None:
            return "Score: (?:" + "|".join(re.escape(str(v)) for v in values) + ")"
        return r"Score: -?[0-9]{1,4}(?:\.[0-9]{1,3})?"

    def answer_schema(self) -> dict[str, Any]:
        """The JSON schema ``guided: json_schema`` holds the judge's answer to."""
        if self.mode == "pairwise":
            prop: dict[str, Any] = {"type": "string", "enum": ["A", "B", "C"]}
            key = "verdict"
        else:
            values = self._integer_scale()
            prop = (
                {"type": "integer", "enum": values}
                if values
                else {"type": "number", "minimum": self.scale[0], "maximum": self.scale[1]}
            )
            key = "score"
        return {"type": "object", "properties": {key: prop}, "required": [key], "additionalProperties": False}

    def _calls(self, model, template, completions, prompts, references) -> list[list[tuple[str, dict, int]]]:
        """Per sample, its judge calls as (cache key, request body, sign): sign +1 when the completion is A."""
        lo, hi = self.scale
        out = []
        for i, completion in enumerate(completions):
            text = render(completion)
            if self.strip_think:
                text = strip_thinking(text)
            prompt = render(prompts[i]) if prompts is not None else ""
            reference = render(references[i]) if references is not None else ""
            if self.mode == "pointwise":
                fields = {"prompt": prompt, "completion": text, "reference": reference, "min": lo, "max": hi}
                orders = [(template.format(**fields), 1)]
            else:
                orders = [(template.format(prompt=prompt, a=text, b=reference), 1)]
                if self.swap:
                    orders.append((template.format(prompt=prompt, a=reference, b=text), -1))
            calls = []
            for message, sign in orders:
                body = self._body(model, message)
                key = hashlib.sha256(
                    json.dumps([self.base_url, self.mode, body], sort_keys=True, default=str).encode()
                ).hexdigest()
                calls.append((key, body, sign))
            out.append(calls)
        return out

    async def _resolve_model(self, client: Any) -> str:
        if self.model is None:
            url = f"{self.base_url}/models"
            data = await self._request(client, "GET", url, None, "the model list")
            try:
                self.model = str(data["data"][0]["id"])
            except (KeyError, IndexError, TypeError):
                raise RewardError(
                    self._scrub(f"reward '{NAME}': {url} lists no model ({_snippet(data)}); set the judge's 'model'")
                ) from None
            log.info("reward '%s': judging with model '%s' at %s", NAME, self.model, self.base_url)
        return self.model

    async def _answers(self, client: Any, model: str, calls: list[list[tuple[str, dict, int]]]) -> dict[str, str]:
        answers: dict[str, str] = {}
        pending: dict[str, tuple[dict, int]] = {}
        for sample, sample_calls in enumerate(calls):
            for key, body, _ in sample_calls:
                if key in answers or key in pending:
                    self.stats.deduplicated += 1
                    continue
                cached = self._cached(key)
                if cached is not None:
                    self.stats.cache_hits += 1
                    answers[key] = cached
                else:
                    pending[key] = (body, sample)
        if not pending:
            return answers
        semaphore = asyncio.Semaphore(self.concurrency)
        url = f"{self.base_url}/chat/completions"

        async def one(key: str, body: dict, sample: int) -> None:
            async with semaphore:
                data = await self._request(client, "POST", url, body, f"sample {sample}")
            try:
                content = data["choices"][0]["message"].get("content")
            except (KeyError, IndexError, TypeError, AttributeError):
                raise RewardError(
                    self._scrub(
                        f"reward '{NAME}': {url} answered sample {sample} without choices[0].message: {_snippet(data)}"
                    )
                ) from None
            answer = "" if content is None else str(content)
            self.stats.answers += 1
            answers[key] = answer
            self._remember(key, answer, model)

        tasks = [asyncio.ensure_future(one(key, body, sample)) for key, (body, sample) in pending.items()]
        try:
            await asyncio.gather(*tasks)
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise
        return answers

    def _cached(self, key: str) -> str | None:
        if not self.use_cache:
            return None
        if key in self._memory:
            return self._memory[key]
        if self.disk is not None:
            answer = self.disk.get(key)
            if answer is not None:
                self._memory[key] = answer
            return answer
        return None

    def _remember(self, key: str, answer: str, model: str) -> None:
        if not self.use_cache:
            return
        if len(self._memory) >= MEMORY_CACHE_ENTRIES:
            self._memory.pop(next(iter(self._memory)))
        self._memory[key] = answer
        if self.disk is not None:
            self.disk.put(key, answer, {"model": model, "mode": self.mode})

    async def _request(self, client: Any, method: str, url: str, body: dict | None, what: str) -> Any:
        import httpx

        attempts = self.retries + 1
        last = ""
        for attempt in range(attempts):
            self.stats.requests += 1
            delay = min(self.backoff * 2**attempt, MAX_WAIT_S)
            try:
                response = await asyncio.wait_for(client.request(method, url, json=body), self.timeout)
            except (asyncio.TimeoutError, httpx.TimeoutException):
                last = f"no answer within {self.timeout:g} s"
            except httpx.TransportError as exc:
                last = f"{type(exc).__name__}: {exc}"
            else:
                status = response.status_code
                if status == 429 or status >= 500:
                    last = f"HTTP {status}: {_snippet(response.text, 200)}"
                    delay = max(delay, _retry_after(response.headers))
                elif status >= 400:
                    raise RewardError(
                        self._scrub(
                            f"reward '{NAME}': judge endpoint {url} refused {what} (HTTP {status}, not retried): "
                            f"{_snippet(response.text, 300)}"
                        )
                    )
                else:
                    try:
                        return response.json()
                    except ValueError:
                        raise RewardError(
                            self._scrub(
                                f"reward '{NAME}': judge endpoint {url} answered {what} with non-JSON: {_snippet(response.text)}"
                            )
                        ) from None
            if attempt + 1 < attempts:
                await _sleep(delay)
        message = self._scrub(
            f"reward '{NAME}': judge endpoint {url} failed {what} after {attempts} attempt(s): {last}"
        )
        self._down = (time.monotonic(), message)
        raise JudgeEndpointError(message)

    # -------------------------------------------------------------- scoring
    def _scores(self, calls, answers: dict[str, str], completions: Sequence) -> list[float | None]:
        lo, hi = (float(v) for v in self.scale)
        scores: list[float | None] = []
        bad: list[tuple[int, str]] = []
        total = 0
        for i, sample_calls in enumerate(calls):
            values = []
            for key, _, sign in sample_calls:
                answer = answers[key]
                total += 1
                if self.mode == "pointwise":
                    score = parse_score(answer, (lo, hi), self.out_of_range)
                    value = None if score is None else (score - lo) / (hi - lo)
                else:
                    verdict = parse_verdict(answer)
                    value = None if verdict is None else {"A": 1.0, "B": 0.0, "C": 0.5}[verdict]
                    if value is not None and sign < 0:
                        value = 1.0 - value
                if value is None:
                    bad.append((i, answer))
                else:
                    values.append(value)
            # Pairwise: when one order's answer is unparsable, the other order's verdict stands alone.
            scores.append(sum(values) / len(values) if values else None)
        if bad:
            self.stats.unparsable += len(bad)
            sample, answer = bad[0]
            if self.on_unparsable == "raise":
                raise RewardError(
                    f"reward '{NAME}': the judge's answer for sample {sample} (completion {_snippet(completions[sample], 40)!r}) "
                    f"has no {'score' if self.mode == 'pointwise' else 'verdict'}: {_snippet(answer)!r}"
                )
            log.warning(
                "reward '%s': %d of %d judge answers unparsable (scored %s), e.g. sample %d: %r",
                NAME,
                len(bad),
                total,
                "None" if self.on_unparsable == "none" else "0.0",
                sample,
                _snippet(answer),
            )
            if self.on_unparsable == "zero":
                scores = [0.0 if s is None else s for s in scores]
        return scores


_OPTIONS = tuple(inspect.signature(Judge.__init__).parameters)[1:]
_JUDGES: dict[str, Judge] = {}
_JUDGES_LOCK = threading.Lock()


def get_judge(**options: Any) -> Judge:
    """The judge for these options, made once and kept (with its caches) for later calls."""
    try:
        bound = inspect.signature(Judge).bind(**options)
    except TypeError as exc:
        raise ConfigError(f"reward '{NAME}': {exc}") from None
    bound.apply_defaults()  # the same judge whether an option is given or left at its default
    key = json.dumps(bound.arguments, sort_keys=True, default=repr)
    with _JUDGES_LOCK:
        judge = _JUDGES.get(key)
        if judge is None:
            judge = _JUDGES[key] = Judge(**options)
        return judge


def clear_judges() -> None:
    """Forget the judges kept between calls (their in-memory caches and counters go with them)."""
    with _JUDGES_LOCK:
        for judge in _JUDGES.values():
            if judge.disk is not None:
                judge.disk.close()
        _JUDGES.clear()


# In a recipe the reward is the class: its options are checked against ``Judge.__init__`` when the
# recipe is validated, and one judge (with its caches) is built on the first call.
REWARDS.register(NAME, Judge)


def llm_judge(completions: Sequence, prompts: Sequence | None = None, **options_and_columns: Any) -> list[float | None]:
    """The judge as a plain function: ``Judge`` options and dataset columns, both by keyword.

    In a recipe::

        rewards:
          - name: llm_judge
            kwargs: {rubric: dialogue, base_url: "http://judge:8000/v1", scale: [1, 10], cache_path: judge.sqlite}
    """
    options = {k: options_and_columns.pop(k) for k in list(options_and_columns) if k in _OPTIONS}
    return get_judge(**options)(completions, prompts, **options_and_columns)


llm_judge.reward_options = _OPTIONS  # read from **options_and_columns: checked against Judge's options


__all__ = [
    "RUBRICS",
    "DiskCache",
    "Judge",
    "JudgeEndpointError",
    "JudgeStats",
    "clear_judges",
    "get_judge",
    "llm_judge",
    "parse_score",
    "parse_verdict",
    "render",
    "rubric_template",
    "template_fields",
]
