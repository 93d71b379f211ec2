"""Offline, deterministic speech from the espeak-ng that ``espeakng-loader`` bundles (via ctypes).

libespeak-ng keeps synthesis state in C statics that no API call resets (the second identical
call in a process differs from the first), and seeds its noise generator from the clock. So every
call loads a private copy of the library, initialises it, seeds it, synthesises and unloads it:
identical arguments give byte-identical audio whatever ran before (~7 ms a sentence). Calls are
serialised by a lock; use processes for parallelism.
"""

from __future__ import annotations

import _ctypes
import atexit
import ctypes
import os
import shutil
import tempfile
import threading

import numpy as np

SAMPLE_RATE = 22_050  # what espeak_Initialize reports for the bundled data
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # without it a bad data path makes the library call exit(1)
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4

# Variants whose voice files declare a gender (others default to "male" inside espeak: unusable as labels).
MALE_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7")
FEMALE_VARIANTS = ("f1", "f2", "f3", "f4", "f5")
# espeak matches voice *file* names; language codes that are not file names map here.
_VOICE_ALIASES = {"zh": "cmn"}

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
_lock = threading.Lock()
_chunks: list[bytes] = []
_tmpdir: str | None = None


@_CALLBACK
def _on_audio(wav, n, events):  # module-level: never garbage-collected while the library holds it
    if n > 0 and wav:
        _chunks.append(ctypes.string_at(wav, n * 2))
    return 0


def _library_copy() -> str:
    import espeakng_loader

    global _tmpdir
    if _tmpdir is None:
        _tmpdir = tempfile.mkdtemp(prefix="audiorl_espeak_")
        atexit.register(shutil.rmtree, _tmpdir, True)
    path = os.path.join(_tmpdir, "libespeak-ng.so")
    if not os.path.exists(path):
        shutil.copyfile(espeakng_loader.get_library_path(), path)
    return path


def _load() -> ctypes.CDLL:
    import espeakng_loader

    lib = ctypes.CDLL(_library_copy())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetSynthCallback.argtypes = [_CALLBACK]
    lib.espeak_SetSynthCallback.restype = None
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_Synth.argtypes = [
        ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
        ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
    ]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    data = espeakng_loader.get_data_path().encode()
    sr = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
    if sr != SAMPLE_RATE:
        _ctypes.dlclose(lib._handle)
        raise RuntimeError(f"espeak-ng failed to initialise from {data.decode()} (returned {sr})")
    lib.espeak_SetSynthCallback(_on_audio)
    return lib


def synthesize(text: str, voice: str = "en", rate_wpm: int = 175, pitch: int = 50, pitch_range: int = 50, seed: int = 0) -> tuple[np.ndarray, int]:
    """Speak ``text``; returns (float32 mono waveform in [-1, 1), 22050).

    ``voice`` is ``<language>[+<variant>]`` ("en+f2", "cmn+m3"); ``rate_wpm`` >= 80 words per
    minute; ``pitch`` and ``pitch_range`` 0-99 (50 is the voice's default).
    """
    base, plus, variant = voice.partition("+")
    name = _VOICE_ALIASES.get(base, base) + plus + variant
    with _lock:
        lib = _load()
        try:
            if lib.espeak_SetVoiceByName(name.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice '{voice}'")
            # Parameters after the voice, all of them every call (the library state is global).
            for param, value in ((_RATE, rate_wpm), (_PITCH, pitch), (_RANGE, pitch_range), (_VOLUME, 100)):
                lib.espeak_SetParameter(param, int(value), 0)
            lib.espeak_ng_SetRandSeed(seed)
            buf = ctypes.create_string_buffer(text.encode("utf-8"))
            _chunks.clear()
            if lib.espeak_Synth(buf, len(buf), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None) != 0:
                raise RuntimeError(f"espeak-ng could not synthesise {text!r}")
            lib.espeak_Synchronize()
            pcm = np.frombuffer(b"".join(_chunks), dtype=np.int16)
            _chunks.clear()
        finally:
            lib.espeak_Terminate()
            _ctypes.dlclose(lib._handle)
    return pcm.astype(np.float32) / np.float32(32768.0), SAMPLE_RATE


def voice_variants() -> list[tuple[str, str]]:
    """(variant, gender) pairs with a declared gender, e.g. ("m3", "male"), ("f2", "female")."""
    return [(v, "male") for v in MALE_VARIANTS] + [(v, "female") for v in FEMALE_VARIANTS]
