"""Rewards on a spoken reply: intelligibility (ASR error), speaker similarity and emotion.

Step-Audio 2 answers in text and in discrete speech codes (after ``<tts_start>``, 1 text token : 4
audio tokens; codes 0..6560 at 25 Hz). The RL core passes each completion's parts to the rewards
that name them: ``audio_codes`` (per completion, a list of codes with the token offset and the
audio pads removed; empty for a text-only reply), ``answers`` (the text outside ``<think>``, the
text interleaved with the speech included) and ``thinks``.

Every reward here first turns the codes into a waveform with a **vocoder**, a hook the recipe
names (``vocoder: package.module:function`` or ``path/file.py:function``, a path relative to the
working directory)::

    def my_vocoder(codes: list[int], **vocoder_kwargs) -> tuple[np.ndarray, int]:
        ...  # token2wav / CosyVoice 2 flow + HiFT: 25 Hz codes -> a 24 kHz waveform
        return waveform_float32_1d, 24_000

A class is constructed once per process with ``vocoder_kwargs`` (load the flow and HiFT weights
there) and its instances are called with the codes alone; a function gets ``vocoder_kwargs`` on
every call. One utterance per call: token2wav synthesises one reply at a time. Waveforms are kept
per process (the last 512 syntheses), so several rewards on the same replies synthesise once.
Nothing is downloaded: the user brings the vocoder. :func:`tone_vocoder` is a stand-in for tests.

The rewards (each a class built once with its YAML ``kwargs``; ``check_kwargs`` validates those
before anything loads):

* ``speech_asr_error``: vocoder -> a local transformers ASR checkpoint (``asr_model``: Whisper or
  any speech seq2seq or CTC model) -> the error rate (rewards/asr.py) against the reply's own text
  (``answers``) or a dataset column (``reference_column``); ``exp(-k * error)`` (verl-omni's
  Qwen3-TTS RL: ``exp(-2.5 * CER)``) or ``1 - error``.
* ``speaker_similarity``: cosine between an embedding of the reply's voice and of a reference
  voice (``reference_wav`` or a ``reference_column`` of wav paths), from an ``embedder`` hook
  ``fn(waveform, sample_rate) -> vector`` (CAM++, ECAPA, WavLM-SV: the user's).
* ``speech_emotion``: probability (or indicator) of the ``target`` emotion (or ``target_column``)
  from a ``classifier``: a local transformers audio-classification checkpoint, or a hook
  ``fn(waveform, sample_rate) -> label | {label: probability}``.

A reply without codes (text only) gets ``None`` (not applicable: left out of the weighted sum)
by default, so a mixed text/speech data set does not punish text answers to text tasks;
``no_audio: zero`` scores it 0 where every prompt asks for speech.

verl-omni normalises each of these rewards within a group. audiorl's RewardSet sees a flat batch
(no groups), so it has no per-reward group normalisation; GRPO's advantage normalises the weighted
sum within each group. Weight the rewards so their ranges are comparable (all three lie in [0, 1],
speaker similarity in [-1, 1]).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from audiorl.common.errors import ConfigError, RewardError, missing_input
from audiorl.data.audio import load_audio, resample
from audiorl.rewards.asr import METRICS, error_rate
from audiorl.rewards.registry import REWARDS, import_callable
from audiorl.rewards.text import as_text, strip_thinking

log = logging.getLogger(__name__)

CODEBOOK_SIZE = 6561  # Step-Audio 2's speech codes are 0..6560; 6561 is the audio pad, removed upstream
CODE_RATE = 25  # speech codes per second
NO_AUDIO = ("none", "zero")
ASR_VALUES = ("exp", "linear")
EMOTION_VALUES = ("probability", "indicator")
DTYPES = ("float32", "bfloat16", "float16")
WAVE_CACHE_ENTRIES = 512


# ------------------------------------------------------------------ the stand-in vocoder
def tone_vocoder(codes: Sequence[int], sample_rate: int = 24_000, amplitude: float = 0.3) -> tuple[np.ndarray, int]:
    """Each code -> a 40 ms sine (25 codes per second, as the real codes); pitch from the code (80..1280 Hz).

    A deterministic, offline stand-in for token2wav, for tests and tiny runs: different codes sound
    different, so an ASR model or an embedder gets inputs that depend on them. Not speech.

    >>> wave, sr = tone_vocoder([0, 6560]); wave.shape, wave.dtype, sr
    ((1920,), dtype('float32'), 24000)
    """
    step = sample_rate // CODE_RATE
    t = np.arange(step) / sample_rate
    segments = [amplitude * np.sin(2 * np.pi * 80.0 * 2 ** ((int(c) % 64) / 16) * t) for c in codes]
    wave = np.concatenate(segments) if segments else np.zeros(0)
    return wave.astype(np.float32), sample_rate


# ------------------------------------------------------------------ hooks
_HOOKS: dict[str, Callable] = {}
_HOOKS_LOCK = threading.Lock()


def _key(*parts: Any) -> str:
    return json.dumps(parts, sort_keys=True, default=repr)


def check_hook(spec: Any, where: str) -> None:
    """A hook option's form (``module:function`` / ``file.py:function``), checked before anything imports."""
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError(f"{where}: {spec!r} is not of the form 'package.module:function' or 'path/file.py:function'")
    path = spec.rpartition(":")[0]
    if path.endswith(".py") and not os.path.isfile(path):
        missing_input(f"{where}: file '{path}' does not exist")


def load_hook(spec: str, kwargs: Mapping[str, Any] | None, where: str) -> Callable:
    """The callable ``spec`` names: a class constructed once with ``kwargs``, or a function bound to them."""
    kwargs = dict(kwargs or {})
    key = _key(spec, kwargs)
    with _HOOKS_LOCK:
        if key not in _HOOKS:
            target = import_callable(spec, where)
            if isinstance(target, type):
                try:
                    _HOOKS[key] = target(**kwargs)
                except Exception as exc:
                    raise ConfigError(f"{where} could not be constructed: {type(exc).__name__}: {exc}") from exc
            else:
                _HOOKS[key] = functools.partial(target, **kwargs) if kwargs else target
        return _HOOKS[key]


def _check_kwargs_option(value: Any, where: str) -> None:
    if value is not None and not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a mapping of keyword arguments, got {type(value).__name__}")


def _check_choice(value: Any, choices: Sequence[str], where: str) -> None:
    if value not in choices:
        raise ConfigError(f"{where} must be one of {', '.join(choices)}, got {value!r}")


def _check_positive_int(value: Any, where: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{where} must be a positive integer, got {value!r}")


def _check_checkpoint(path: Any, where: str, what: str) -> None:
    if not isinstance(path, str) or not path:
        raise ConfigError(f"{where} needs the path of a local {what} checkpoint directory")
    if not os.path.isfile(os.path.join(path, "config.json")):
        missing_input(f"{where}: '{path}' is not a Hugging Face checkpoint directory (no config.json)")


def _options(local_vars: dict) -> dict:
    """A constructor's arguments from its ``locals()``, to hand to ``check_kwargs``."""
    return {k: v for k, v in local_vars.items() if k not in ("self", "__class__")}


def check_speech_options(where: str, vocoder: Any, vocoder_kwargs: Any, no_audio: Any) -> None:
    """The options every reward here takes."""
    if not vocoder:
        raise ConfigError(
            f"{where} needs kwargs.vocoder: the codes -> waveform hook ('package.module:function' or "
            "'path/file.py:function'; audiorl.rewards.audio_output:tone_vocoder is an offline stand-in)"
        )
    check_hook(vocoder, f"{where}: vocoder")
    _check_kwargs_option(vocoder_kwargs, f"{where}: vocoder_kwargs")
    _check_choice(no_audio, NO_AUDIO, f"{where}: no_audio")


# ------------------------------------------------------------------ synthesis
class Vocoder:
    """A vocoder hook plus its recent outputs, shared by every reward naming the same hook and kwargs."""

    def __init__(self, spec: str, kwargs: Mapping[str, Any] | None, where: str):
        self.spec = spec
        self.fn = load_hook(spec, kwargs, f"{where}: vocoder '{spec}'")
        self.cache: OrderedDict[tuple[int, ...], tuple[np.ndarray, int]] = OrderedDict()
        self.lock = threading.Lock()

    def __call__(self, codes: tuple[int, ...], where: str) -> tuple[np.ndarray, int]:
        with self.lock:
            if codes in self.cache:
                self.cache.move_to_end(codes)
                return self.cache[codes]
        try:
            out = self.fn(list(codes))
        except Exception as exc:
            raise RewardError(f"{where}: vocoder '{self.spec}' raised {type(exc).__name__}: {exc}") from exc
        wave, sr = self._checked(out, where)
        with self.lock:
            self.cache[codes] = (wave, sr)
            while len(self.cache) > WAVE_CACHE_ENTRIES:
                self.cache.popitem(last=False)
        return wave, sr

    def _checked(self, out: Any, where: str) -> tuple[np.ndarray, int]:
        """A mono float32 waveform and a positive sample rate, or a RewardError saying what came back."""
        where = f"{where}: vocoder '{self.spec}'"
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RewardError(f"{where} returned {type(out).__name__}; it must return (waveform, sample_rate)")
        wave, sr = out
        if isinstance(sr, bool) or not isinstance(sr, (int, np.integer)) or sr <= 0:
            raise RewardError(f"{where} returned sample rate {sr!r}; it must be a positive integer (Hz)")
        if not isinstance(wave, np.ndarray):
            raise RewardError(
                f"{where} returned a {type(wave).__name__} waveform; it must be a numpy array "
                "(a torch tensor: .float().cpu().numpy())"
            )
        if wave.ndim == 2 and 1 in wave.shape:  # [1, T] or [T, 1]: one channel
            wave = wave.reshape(-1)
        if wave.ndim != 1 or wave.size == 0 or not np.issubdtype(wave.dtype, np.number):
            raise RewardError(
                f"{where} returned a waveform of shape {wave.shape} and dtype {wave.dtype}; it must be a non-empty "
                "1-D array of samples"
            )
        wave = wave.astype(np.float32, copy=False)
        if not np.isfinite(wave).all():
            raise RewardError(f"{where} returned a waveform with NaN or infinite samples")
        return wave, int(sr)


_VOCODERS: dict[str, Vocoder] = {}


def get_vocoder(spec: str, kwargs: Mapping[str, Any] | None, where: str) -> Vocoder:
    """The vocoder for ``spec`` and ``kwargs``, made once per process (``where``: the reward, for errors)."""
    key = _key(spec, dict(kwargs or {}))
    with _HOOKS_LOCK:
        vocoder = _VOCODERS.get(key)
    if vocoder is None:
        vocoder = Vocoder(spec, kwargs, where)  # outside the lock: load_hook takes it
        with _HOOKS_LOCK:
            vocoder = _VOCODERS.setdefault(key, vocoder)
    return vocoder


def clear_caches() -> None:
    """Forget loaded hooks, vocoders (with their waveforms) and models (e.g. between tests)."""
    with _HOOKS_LOCK:
        _HOOKS.clear()
        _VOCODERS.clear()
        _MODELS.clear()


# ------------------------------------------------------------------ the shared reward shape
def _column(columns: Mapping[str, Sequence], name: str, option: str, where: str, n: int) -> list:
    if name not in columns:
        raise RewardError(
            f"{where}: {option} '{name}' is not a column of the batch (columns: {', '.join(sorted(columns)) or '(none)'})"
        )
    values = list(columns[name])
    if len(values) != n:
        raise RewardError(f"{where}: column '{name}' has {len(values)} values for {n} completions")
    return values


class SpeechReward:
    """What the three rewards share: codes checked and synthesised (once per process), ``no_audio`` applied."""

    NAME = "speech"

    def __init__(self, vocoder: str, vocoder_kwargs: Mapping[str, Any] | None, no_audio: str):
        """The subclass has checked the options (its ``check_kwargs``)."""
        self.where = f"reward '{self.NAME}'"
        self.vocoder_spec, self.vocoder_kwargs, self.no_audio = vocoder, dict(vocoder_kwargs or {}), no_audio
        self._vocoder: Vocoder | None = None

    @property
    def vocoder(self) -> Vocoder:
        if self._vocoder is None:  # on the first call: the trainer builds rewards before it needs them
            self._vocoder = get_vocoder(self.vocoder_spec, self.vocoder_kwargs, self.where)
        return self._vocoder

    def codes(self, audio_codes: Sequence, n: int) -> list[tuple[int, ...] | None]:
        """Each completion's codes (None: no speech), checked to be Step-Audio 2 codes."""
        if audio_codes is None or len(audio_codes) != n:
            got = "None" if audio_codes is None else f"{len(audio_codes)} code lists"
            raise RewardError(f"{self.where}: got {got} in audio_codes for {n} completions")
        out: list[tuple[int, ...] | None] = []
        for i, row in enumerate(audio_codes):
            if row is None or len(row) == 0:
                out.append(None)
                continue
            if not all(isinstance(c, (int, np.integer)) and not isinstance(c, bool) for c in row):
                raise RewardError(f"{self.where}: sample {i}'s audio_codes are not all integers")
            bad = [int(c) for c in row if not 0 <= c < CODEBOOK_SIZE]
            if bad:
                raise RewardError(
                    f"{self.where}: sample {i} has speech code {bad[0]} outside 0..{CODEBOOK_SIZE - 1} "
                    "(audio_codes are passed with the token offset and the pads removed)"
                )
            out.append(tuple(int(c) for c in row))
        return out

    def waves(self, codes: list[tuple[int, ...] | None], sample_rate: int | None = None) -> list[np.ndarray | None]:
        """Each present reply's waveform, resampled to ``sample_rate`` (None: the vocoder's rate)."""
        out: list[np.ndarray | None] = []
        for i, row in enumerate(codes):
            if row is None:
                out.append(None)
                continue
            wave, sr = self.vocoder(row, f"{self.where} (sample {i})")
            out.append(resample(wave, sr, sample_rate) if sample_rate else wave)
        return out

    def absent(self) -> float | None:
        return None if self.no_audio == "none" else 0.0


def _rows(values: Sequence, option: str, where: str, kind: str = "text") -> list[str]:
    out = []
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise RewardError(f"{where}: row {i} of {option} is {type(v).__name__}, not {kind}")
        out.append(v)
    return out


# ------------------------------------------------------------------ models
_MODELS: dict[tuple, Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_model(kind: str, path: str, device: str, dtype: str, where: str) -> Any:
    """A local checkpoint loaded once per process: (model, feature_extractor[, tokenizer])."""
    from audiorl.rewards.preference import check_device

    check_device(device, f"{where}: device")
    key = (kind, os.path.realpath(path), device, dtype)
    with _MODELS_LOCK:
        if key not in _MODELS:
            _MODELS[key] = _LOADERS[kind](path, device, dtype, where)
            log.info("%s: loaded %s model %s on %s (%s)", where, kind, path, device, dtype)
        return _MODELS[key]


def _same_architecture(model: Any, path: str, option: str, where: str) -> None:
    """Refuse a checkpoint of another head: transformers would load it with this head freshly random."""
    saved = getattr(model.config, "architectures", None) or []
    if saved and type(model).__name__ not in saved:
        raise ConfigError(
            f"{where}: {option} '{path}' is a {', '.join(saved)} checkpoint, not a {type(model).__name__}"
        )


def _load_asr(path: str, device: str, dtype: str, where: str) -> tuple:
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForCTC, AutoModelForSpeechSeq2Seq, AutoTokenizer

    kwargs = {"dtype": getattr(torch, dtype), "local_files_only": True}
    try:
        try:  # Whisper-like models generate a transcript
            model, ctc = AutoModelForSpeechSeq2Seq.from_pretrained(path, **kwargs), False
        except ValueError:  # not a seq2seq config: wav2vec2-like models are read greedily per frame
            model, ctc = AutoModelForCTC.from_pretrained(path, **kwargs), True
        features = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: asr_model '{path}' could not be loaded as a speech recognition model: {exc}") from exc
    _same_architecture(model, path, "asr_model", where)
    return model.to(device).eval().requires_grad_(False), features, tokenizer, ctc


def _load_classifier(path: str, device: str, dtype: str, where: str) -> tuple:
    import torch
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    try:
        model = AutoModelForAudioClassification.from_pretrained(path, dtype=getattr(torch, dtype), local_files_only=True)
        features = AutoFeatureExtractor.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"{where}: classifier '{path}' could not be loaded as an audio classifier: {exc}") from exc
    _same_architecture(model, path, "classifier", where)
    return model.to(device).eval().requires_grad_(False), features


_LOADERS = {"asr": _load_asr, "classifier": _load_classifier}


def _inputs(model: Any, features: Any, waves: list[np.ndarray], device: str, dtype: str) -> dict:
    import torch

    if model.config.model_type == "whisper":  # pads every clip to its 30 s window (what its encoder reads)
        inputs = features(waves, sampling_rate=features.sampling_rate, return_tensors="pt")
    else:  # the mask keeps a clip's result independent of the others in its batch
        inputs = features(
            waves, sampling_rate=features.sampling_rate, return_tensors="pt", padding=True, return_attention_mask=True
        )
    return {k: v.to(device, getattr(torch, dtype)) if v.is_floating_point() else v.to(device) for k, v in inputs.items()}


def transcribe(
    model: Any,
    features: Any,
    tokenizer: Any,
    ctc: bool,
    waves: list[np.ndarray],
    *,
    device: str = "cpu",
    dtype: str = "float32",
    max_new_tokens: int = 128,
    generate_kwargs: Mapping[str, Any] | None = None,
) -> list[str]:
    """Transcripts of waveforms already at the feature extractor's rate (greedy, as ASR evaluation is)."""
    import torch

    inputs = _inputs(model, features, waves, device, dtype)
    with torch.inference_mode():
        if ctc:
            ids = model(**inputs).logits.argmax(dim=-1)
        else:
            options = {"max_new_tokens": max_new_tokens, "do_sample": False, **dict(generate_kwargs or {})}
            ids = model.generate(**inputs, **options)
    return [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]


# ------------------------------------------------------------------ speech_asr_error
class SpeechASRError(SpeechReward):
    """Intelligibility of the spoken reply: ``exp(-k * error)`` (default) or ``1 - error`` (clipped at 0).

    vocoder(codes) -> waveform -> the ``asr_model`` checkpoint (resampled to its rate) -> transcript,
    scored against the reply's ``answers`` (what it meant to say) or the column ``reference_column``
    (a TTS data set's ``transcript``) with rewards/asr.py's ``metric`` (default ``cer``: verl-omni's
    exp(-2.5 * CER)) and normalisation for ``language`` (a code, or None: guessed from the reference).
    Values lie in (0, 1]. A reply without codes: ``no_audio`` (``none``: not applicable; ``zero``).
    ``generate_kwargs`` go to ``generate`` (Whisper: ``{language: en, task: transcribe}``); Whisper
    reads the first 30 s of a reply (its window). Transcription is greedy, ``batch_size`` replies at a
    time on ``device``.
    """

    NAME = "speech_asr_error"

    def __init__(
        self,
        *,
        asr_model: str | None = None,
        vocoder: str | None = None,
        vocoder_kwargs: Mapping[str, Any] | None = None,
        reference_column: str | None = None,
        metric: str = "cer",
        language: str | None = None,
        value: str = "exp",
        k: float = 2.5,
        no_audio: str = "none",
        batch_size: int = 8,
        max_new_tokens: int = 128,
        generate_kwargs: Mapping[str, Any] | None = None,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        self.check_kwargs(**_options(locals()))
        super().__init__(vocoder, vocoder_kwargs, no_audio)
        self.asr_model, self.reference_column, self.metric, self.language = asr_model, reference_column, metric, language
        self.value, self.k, self.batch_size, self.max_new_tokens = value, float(k), batch_size, max_new_tokens
        self.generate_kwargs, self.device, self.dtype = dict(generate_kwargs or {}), device, dtype

    @staticmethod
    def check_kwargs(
        asr_model=None, vocoder=None, vocoder_kwargs=None, reference_column=None, metric="cer", language=None,
        value="exp", k=2.5, no_audio="none", batch_size=8, max_new_tokens=128, generate_kwargs=None,
        device="cpu", dtype="float32", **_,
    ) -> None:
        where = f"reward '{SpeechASRError.NAME}'"
        _check_checkpoint(asr_model, f"{where}: asr_model", "speech recognition (e.g. Whisper)")
        check_speech_options(where, vocoder, vocoder_kwargs, no_audio)
        _check_kwargs_option(generate_kwargs, f"{where}: generate_kwargs")
        if reference_column is not None and (not isinstance(reference_column, str) or not reference_column):
            raise ConfigError(f"{where}: reference_column must be a column name (or null: the reply's answers)")
        _check_choice(metric, METRICS, f"{where}: metric")
        if language is not None and not isinstance(language, str):
            raise ConfigError(f"{where}: language must be a code such as 'en' or 'zh' (or null: guessed)")
        _check_choice(value, ASR_VALUES, f"{where}: value")
        if isinstance(k, bool) or not isinstance(k, (int, float)) or not math.isfinite(k) or k <= 0:
            raise ConfigError(f"{where}: k must be a positive number (exp(-k * error)), got {k!r}")
        _check_positive_int(batch_size, f"{where}: batch_size")
        _check_positive_int(max_new_tokens, f"{where}: max_new_tokens")
        _check_choice(dtype, DTYPES, f"{where}: dtype")

    def score(self, error: float) -> float:
        return math.exp(-self.k * error) if self.value == "exp" else max(0.0, 1.0 - error)

    def references(self, n: int, answers: Sequence | None, completions: Sequence, columns: Mapping) -> list[str]:
        if self.reference_column is not None:
            values = _column(columns, self.reference_column, "reference_column", self.where, n)
            return _rows(values, f"column '{self.reference_column}' (reference_column)", self.where)
        if answers is None:  # called without the parts: the completion's text after the thinking
            return [strip_thinking(as_text(c)) for c in completions]
        if len(answers) != n:
            raise RewardError(f"{self.where}: {len(answers)} answers for {n} completions")
        return ["" if a is None else as_text(a) for a in answers]

    def transcribe(self, waves: list[np.ndarray]) -> list[str]:
        model, features, tokenizer, ctc = _load_model("asr", self.asr_model, self.device, self.dtype, self.where)
        out: list[str] = []
        for start in range(0, len(waves), self.batch_size):
            out += transcribe(
                model, features, tokenizer, ctc, waves[start : start + self.batch_size], device=self.device,
                dtype=self.dtype, max_new_tokens=self.max_new_tokens, generate_kwargs=self.generate_kwargs,
            )
        return out

    def __call__(
        self, completions: Sequence, audio_codes: Sequence, answers: Sequence | None = None, **columns: Sequence
    ) -> list[float | None]:
        n = len(completions)
        references = self.references(n, answers, completions, columns)
        codes = self.codes(audio_codes, n)
        present = [i for i, c in enumerate(codes) if c is not None]
        if not present:
            return [self.absent()] * n
        model_rate = _load_model("asr", self.asr_model, self.device, self.dtype, self.where)[1].sampling_rate
        waves = self.waves([codes[i] for i in present], model_rate)
        transcripts = self.transcribe(waves)
        scores: list[float | None] = [self.absent()] * n
        for i, hypothesis in zip(present, transcripts):
            scores[i] = self.score(error_rate(references[i], hypothesis, self.language, self.metric))
        return scores


# ------------------------------------------------------------------ speaker_similarity
def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))


class SpeakerSimilarity(SpeechReward):
    """Cosine similarity in [-1, 1] between the reply's voice and a reference voice, by the ``embedder`` hook.

    ``embedder``: ``package.module:function`` or ``path/file.py:function``, called as
    ``fn(waveform, sample_rate, **embedder_kwargs) -> 1-D vector`` (a class: constructed once with
    ``embedder_kwargs``, called with waveform and rate). Both voices reach it mono float32 at
    ``sample_rate`` (default 16 kHz, what CAM++/ECAPA/WavLM speaker models take). The reference is
    one ``reference_wav`` for every sample or a ``reference_column`` of wav paths (exactly one of
    the two); its embeddings are kept per path. A reply without codes: ``no_audio``.
    """

    NAME = "speaker_similarity"

    def __init__(
        self,
        *,
        embedder: str | None = None,
        embedder_kwargs: Mapping[str, Any] | None = None,
        vocoder: str | None = None,
        vocoder_kwargs: Mapping[str, Any] | None = None,
        reference_wav: str | None = None,
        reference_column: str | None = None,
        sample_rate: int = 16_000,
        no_audio: str = "none",
    ):
        self.check_kwargs(**_options(locals()))
        super().__init__(vocoder, vocoder_kwargs, no_audio)
        self.embedder_spec, self.embedder_kwargs = embedder, dict(embedder_kwargs or {})
        self.reference_wav, self.reference_column, self.sample_rate = reference_wav, reference_column, sample_rate
        self._references: dict[str, np.ndarray] = {}

    @staticmethod
    def check_kwargs(
        embedder=None, embedder_kwargs=None, vocoder=None, vocoder_kwargs=None, reference_wav=None,
        reference_column=None, sample_rate=16_000, no_audio="none", **_,
    ) -> None:
        where = f"reward '{SpeakerSimilarity.NAME}'"
        if not embedder:
            raise ConfigError(f"{where} needs kwargs.embedder: a speaker-embedding hook 'package.module:function'")
        check_hook(embedder, f"{where}: embedder")
        _check_kwargs_option(embedder_kwargs, f"{where}: embedder_kwargs")
        check_speech_options(where, vocoder, vocoder_kwargs, no_audio)
        if (reference_wav is None) == (reference_column is None):
            raise ConfigError(f"{where} needs exactly one of kwargs.reference_wav (a wav path) and kwargs.reference_column")
        if reference_wav is not None and not os.path.isfile(str(reference_wav)):
            missing_input(f"{where}: reference_wav '{reference_wav}' does not exist")
        _check_positive_int(sample_rate, f"{where}: sample_rate")

    def embed(self, wave: np.ndarray, what: str) -> np.ndarray:
        fn = load_hook(self.embedder_spec, self.embedder_kwargs, f"{self.where}: embedder '{self.embedder_spec}'")
        where = f"{self.where}: embedder '{self.embedder_spec}' on {what}"
        try:
            out = fn(wave, self.sample_rate)
        except Exception as exc:
            raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc
        try:
            vector = np.asarray(out, dtype=np.float64).reshape(-1)
        except (TypeError, ValueError):
            raise RewardError(f"{where} returned {type(out).__name__}; it must return a 1-D vector of numbers") from None
        if vector.size == 0 or not np.isfinite(vector).all() or not np.linalg.norm(vector) > 0:
            raise RewardError(f"{where} returned an empty, non-finite or all-zero embedding")
        return vector

    def reference(self, path: Any, row: int) -> np.ndarray:
        if not isinstance(path, str):
            raise RewardError(f"{self.where}: row {row}'s reference wav is {type(path).__name__}, not a path")
        if path not in self._references:
            try:
                wave = load_audio(path, self.sample_rate)
            except Exception as exc:
                option = "reference_wav" if self.reference_wav is not None else f"column '{self.reference_column}'"
                raise RewardError(f"{self.where}: the reference wav of row {row} ({option}) could not be read: {exc}") from exc
            self._references[path] = self.embed(wave, f"reference '{path}'")
        return self._references[path]

    def __call__(self, completions: Sequence, audio_codes: Sequence, **columns: Sequence) -> list[float | None]:
        n = len(completions)
        if self.reference_column is not None:
            paths = _column(columns, self.reference_column, "reference_column", self.where, n)
        else:
            paths = [self.reference_wav] * n
        codes = self.codes(audio_codes, n)
        waves = self.waves(codes, self.sample_rate)
        scores: list[float | None] = []
        for i, wave in enumerate(waves):
            if wave is None:
                scores.append(self.absent())
                continue
            generated = self.embed(wave, f"sample {i}")
            reference = self.reference(paths[i], i)
            if generated.shape != reference.shape:
                raise RewardError(
                    f"{self.where}: embedder '{self.embedder_spec}' gave {generated.size} values for sample {i} "
                    f"but {reference.size} for its reference"
                )
            scores.append(cosine(generated, reference))
        return scores


# ------------------------------------------------------------------ speech_emotion
def _label(text: Any) -> str:
    return str(text).strip().lower()


class SpeechEmotion(SpeechReward):
    """The probability (default) or indicator (top label) of the target emotion in the reply's voice, in [0, 1].

    ``classifier``: a local transformers audio-classification checkpoint directory (its
    ``id2label`` names the emotions; softmax over its logits, at its feature extractor's rate), or a
    hook ``package.module:function`` / ``path/file.py:function`` called as
    ``fn(waveform, sample_rate, **classifier_kwargs)`` at ``sample_rate`` and returning a label or
    ``{label: probability}``. The target is ``target`` for every sample or the column
    ``target_column`` (exactly one of the two); labels compare case-insensitively. A reply without
    codes: ``no_audio``.
    """

    NAME = "speech_emotion"

    def __init__(
        self,
        *,
        classifier: str | None = None,
        classifier_kwargs: Mapping[str, Any] | None = None,
        vocoder: str | None = None,
        vocoder_kwargs: Mapping[str, Any] | None = None,
        target: str | None = None,
        target_column: str | None = None,
        value: str = "probability",
        sample_rate: int = 16_000,
        no_audio: str = "none",
        batch_size: int = 8,
        device: str = "cpu",
        dtype: str = "float32",
    ):
        self.check_kwargs(**_options(locals()))
        super().__init__(vocoder, vocoder_kwargs, no_audio)
        self.classifier, self.classifier_kwargs = classifier, dict(classifier_kwargs or {})
        self.target, self.target_column, self.value, self.sample_rate = target, target_column, value, sample_rate
        self.batch_size, self.device, self.dtype = batch_size, device, dtype

    @staticmethod
    def is_checkpoint(classifier: str) -> bool:
        return os.path.isdir(classifier) or ":" not in classifier

    @staticmethod
    def check_kwargs(
        classifier=None, classifier_kwargs=None, vocoder=None, vocoder_kwargs=None, target=None, target_column=None,
        value="probability", sample_rate=16_000, no_audio="none", batch_size=8, device="cpu", dtype="float32", **_,
    ) -> None:
        where = f"reward '{SpeechEmotion.NAME}'"
        if not classifier or not isinstance(classifier, str):
            raise ConfigError(
                f"{where} needs kwargs.classifier: an audio-classification checkpoint directory or a hook 'package.module:function'"
            )
        if SpeechEmotion.is_checkpoint(classifier):
            _check_checkpoint(classifier, f"{where}: classifier", "audio-classification")
        else:
            check_hook(classifier, f"{where}: classifier")
        _check_kwargs_option(classifier_kwargs, f"{where}: classifier_kwargs")
        check_speech_options(where, vocoder, vocoder_kwargs, no_audio)
        if (target is None) == (target_column is None):
            raise ConfigError(f"{where} needs exactly one of kwargs.target (an emotion label) and kwargs.target_column")
        _check_choice(value, EMOTION_VALUES, f"{where}: value")
        _check_positive_int(sample_rate, f"{where}: sample_rate")
        _check_positive_int(batch_size, f"{where}: batch_size")
        _check_choice(dtype, DTYPES, f"{where}: dtype")

    def probabilities(self, waves: list[np.ndarray]) -> list[dict[str, float] | str]:
        """Per waveform (at the vocoder's rate): {label: probability}, or the label a hook returned."""
        if self.is_checkpoint(self.classifier):
            return self._checkpoint_probabilities(waves)
        fn = load_hook(self.classifier, self.classifier_kwargs, f"{self.where}: classifier '{self.classifier}'")
        out: list[dict[str, float] | str] = []
        for i, wave in enumerate(waves):
            where = f"{self.where}: classifier '{self.classifier}' on sample {i}"
            try:
                result = fn(wave, self.sample_rate)
            except Exception as exc:
                raise RewardError(f"{where} raised {type(exc).__name__}: {exc}") from exc
            out.append(_checked_classification(result, where))
        return out

    def _checkpoint_probabilities(self, waves: list[np.ndarray]) -> list[dict[str, float]]:
        import torch

        model, features = _load_model("classifier", self.classifier, self.device, self.dtype, self.where)
        labels = [_label(model.config.id2label[j]) for j in range(model.config.num_labels)]
        multi_label = model.config.problem_type == "multi_label_classification"
        out: list[dict[str, float]] = []
        for start in range(0, len(waves), self.batch_size):
            inputs = _inputs(model, features, waves[start : start + self.batch_size], self.device, self.dtype)
            with torch.inference_mode():
                logits = model(**inputs).logits.float()
            probs = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
            out += [dict(zip(labels, row.tolist())) for row in probs.cpu()]
        return out

    def sample_rate_for_classifier(self) -> int:
        if self.is_checkpoint(self.classifier):
            return _load_model("classifier", self.classifier, self.device, self.dtype, self.where)[1].sampling_rate
        return self.sample_rate

    def score(self, result: dict[str, float] | str, target: str, row: int) -> float:
        if isinstance(result, str):
            return float(result == target)
        if self.is_checkpoint(self.classifier) and target not in result:
            option = "target" if self.target is not None else f"column '{self.target_column}' (target_column)"
            raise RewardError(
                f"{self.where}: row {row}'s target emotion '{target}' ({option}) is not a label of classifier "
                f"'{self.classifier}' (labels: {', '.join(result)})"
            )
        if self.value == "indicator":
            return float(max(result, key=result.get) == target)
        return float(result.get(target, 0.0))

    def __call__(self, completions: Sequence, audio_codes: Sequence, **columns: Sequence) -> list[float | None]:
        n = len(completions)
        if self.target_column is not None:
            values = _column(columns, self.target_column, "target_column", self.where, n)
            targets = [_label(t) for t in _rows(values, f"column '{self.target_column}' (target_column)", self.where, "a label")]
        else:
            targets = [_label(self.target)] * n
        codes = self.codes(audio_codes, n)
        present = [i for i, c in enumerate(codes) if c is not None]
        scores: list[float | None] = [self.absent()] * n
        if not present:
            return scores
        waves = self.waves([codes[i] for i in present], self.sample_rate_for_classifier())
        for i, result in zip(present, self.probabilities(waves)):
            scores[i] = self.score(result, targets[i], i)
        return scores


def _checked_classification(result: Any, where: str) -> dict[str, float] | str:
    """A label or {label: probability in [0, 1]}, with labels lower-cased."""
    if isinstance(result, str):
        return _label(result)
    if not isinstance(result, Mapping):
        raise RewardError(f"{where} returned {type(result).__name__}; it must return a label or {{label: probability}}")
    out = {}
    for label, p in result.items():
        try:
            p = float(p)
        except (TypeError, ValueError):
            raise RewardError(f"{where} returned {p!r} for label {label!r}; probabilities must be numbers") from None
        if not 0.0 <= p <= 1.0:  # also refuses NaN
            raise RewardError(f"{where} returned probability {p} for label {label!r}; it must lie in [0, 1]")
        out[_label(label)] = p
    if not out:
        raise RewardError(f"{where} returned no labels")
    return out


# In a recipe each reward is its class: its options are checked against the constructor when the
# recipe is validated (check_kwargs), and the models load on the first call.
REWARDS.register(SpeechASRError.NAME, SpeechASRError)
REWARDS.register(SpeakerSimilarity.NAME, SpeakerSimilarity)
REWARDS.register(SpeechEmotion.NAME, SpeechEmotion)

__all__ = [
    "CODEBOOK_SIZE",
    "SpeakerSimilarity",
    "SpeechASRError",
    "SpeechEmotion",
    "Vocoder",
    "clear_caches",
    "get_vocoder",
    "load_hook",
    "tone_vocoder",
    "transcribe",
]
