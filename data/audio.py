"""Audio I/O: any wav/flac/ogg/mp3, any rate and channel count, to mono float32 at 16 kHz.

soundfile (bundled libsndfile) decodes, soxr resamples. torchaudio is not used: its PyPI wheels
are CUDA builds that do not import next to a CPU torch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr
from audiorl.common.errors import AudioLoadError

SAMPLE_RATE = 16_000
# A clip shorter than this (an empty file, say) is padded with silence: the audio encoders need at
# least a few frames, and an empty clip must not crash a run.
MIN_SAMPLES = SAMPLE_RATE // 10

log = logging.getLogger(__name__)


def _where(path: str, row: int | None) -> str:
    return f"row {row}: audio file '{path}'" if row is not None else f"audio file '{path}'"


CHANNEL_MIXES = ("mean", "first")


def to_mono(wave: np.ndarray, channels: str = "mean") -> np.ndarray:
    """``[samples, channels]`` -> mono: the channels' mean, or channel 0 (Step-Audio 2's release keeps channel 0)."""
    if wave.shape[1] == 1:
        return wave[:, 0]
    return wave[:, 0] if channels == "first" else wave.mean(axis=1)


def load_audio(path: str | os.PathLike, target_sr: int = SAMPLE_RATE, row: int | None = None, channels: str = "mean") -> np.ndarray:
    """Decode ``path`` to mono float32 at ``target_sr``; ``channels``: how several are made one (``to_mono``).

    Raises AudioLoadError naming the file (and the dataset row, when given) if it is missing,
    unreadable or holds non-finite samples.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise AudioLoadError(f"{_where(path, row)} does not exist")
    try:
        wave, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises its own types; all mean "cannot decode"
        raise AudioLoadError(f"{_where(path, row)} could not be decoded: {exc}") from exc
    wave = to_mono(wave, channels)
    if not np.isfinite(wave).all():
        raise AudioLoadError(f"{_where(path, row)} contains NaN or infinite samples")
    return pad_short(resample(wave, sr, target_sr), source=path)


def resample(wave: np.ndarray, sr: int, target_sr: int = SAMPLE_RATE) -> np.ndarray:
    wave = np.asarray(wave, dtype=np.float32)
    if sr == target_sr or wave.size == 0:
        return np.ascontiguousarray(wave)
    return soxr.resample(wave, sr, target_sr, quality="HQ").astype(np.float32, copy=False)


def pad_short(wave: np.ndarray, source: str = "<array>") -> np.ndarray:
    if wave.size >= MIN_SAMPLES:
        return wave
    log.warning("audio %s has %d samples; padded with silence to %d", source, wave.size, MIN_SAMPLES)
    return np.pad(wave, (0, MIN_SAMPLES - wave.size))


def content_key(wave: np.ndarray) -> str:
    """Identity of a clip by its samples: equal audio shares encoder outputs whatever its file name."""
    return hashlib.sha1(np.ascontiguousarray(wave, dtype=np.float32).tobytes()).hexdigest()


def save_audio(path: str | os.PathLike, wave: np.ndarray, sr: int = SAMPLE_RATE) -> None:
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    sf.write(os.fspath(path), np.asarray(wave, dtype=np.float32), sr)


@dataclass(frozen=True)
class Clip:
    """A registered clip: its content key, where it came from and its length at 16 kHz."""

    key: str
    source: str
    num_samples: int


class WaveCache:
    """Waveforms by content key; the least recently used are dropped beyond ``max_bytes``. Not locked."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes = max_bytes
        self._waves: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def put(self, key: str, wave: np.ndarray) -> None:
        if key in self._waves:
            self._waves.move_to_end(key)
            return
        self._waves[key] = wave
        self._bytes += wave.nbytes
        while self._bytes > self.max_bytes and len(self._waves) > 1:
            _, old = self._waves.popitem(last=False)
            self._bytes -= old.nbytes

    def get(self, key: str) -> np.ndarray | None:
        wave = self._waves.get(key)
        if wave is not None:
            self._waves.move_to_end(key)
        return wave


class AudioStore:
    """Registers clips (files or arrays) once and serves their waveforms by content key.

    File waveforms stay in memory up to ``max_bytes`` (least recently used go first) and are
    decoded again on demand; a file's key is memoised by (path, size, mtime), so an unchanged file
    is not hashed twice. Arrays given in memory are kept: there is nothing to reload them from.
    """

    def __init__(self, max_bytes: int = 1 << 30, channels: str = "mean"):
        """``channels``: how a multi-channel file becomes mono (the model family's ``audio_channels``)."""
        if channels not in CHANNEL_MIXES:
            raise ValueError(f"channels must be one of {', '.join(CHANNEL_MIXES)}, got '{channels}'")
        self.channels = channels
        self._waves = WaveCache(max_bytes)
        self._sources: dict[str, str] = {}
        self._file_keys: dict[tuple[str, int, int], Clip] = {}
        self._arrays: dict[str, np.ndarray] = {}
        self._lock = threading.Lock()

    def add_file(self, path: str | os.PathLike, row: int | None = None) -> Clip:
        path = os.path.abspath(os.fspath(path))
        try:
            st = os.stat(path)
        except FileNotFoundError:
            raise AudioLoadError(f"{_where(path, row)} does not exist") from None
        stamp = (path, st.st_size, st.st_mtime_ns)
        clip = self._file_keys.get(stamp)
        if clip is None:
            wave = load_audio(path, row=row, channels=self.channels)
            clip = Clip(content_key(wave), path, int(wave.size))
            self._file_keys[stamp] = clip
            self._remember(clip.key, wave, path)
        return clip

    def add_array(self, wave: np.ndarray, sr: int = SAMPLE_RATE, source: str = "<array>") -> Clip:
        wave = np.asarray(wave, dtype=np.float32)
        if wave.ndim > 1:
            wave = to_mono(wave, self.channels)
        if not np.isfinite(wave).all():
            raise AudioLoadError(f"audio {source} contains NaN or infinite samples")
        wave = pad_short(resample(wave, sr), source=source)
        clip = Clip(content_key(wave), source, int(wave.size))
        with self._lock:
            self._arrays[clip.key] = wave
        return clip

    def wave(self, clip: Clip) -> np.ndarray:
        with self._lock:
            if clip.key in self._arrays:
                return self._arrays[clip.key]
            wave = self._waves.get(clip.key)
            if wave is not None:
                return wave
        source = self._sources.get(clip.key, clip.source)
        wave = load_audio(source, channels=self.channels)
        if content_key(wave) != clip.key:
            raise AudioLoadError(f"audio file '{source}' changed on disk while training")
        self._remember(clip.key, wave, source)
        return wave

    def _remember(self, key: str, wave: np.ndarray, source: str) -> None:
        with self._lock:
            self._sources.setdefault(key, source)
            self._waves.put(key, wave)
