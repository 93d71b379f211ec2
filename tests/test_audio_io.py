"""Audio loading: formats, rates, channels, resampling, and the errors for bad files."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from audiorl.common.errors import AudioLoadError
from audiorl.data.audio import MIN_SAMPLES, SAMPLE_RATE, AudioStore, content_key, load_audio


def dominant_frequency(wave: np.ndarray, sr: int) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(len(wave))))
    return float(np.fft.rfftfreq(len(wave), 1 / sr)[spectrum.argmax()])


@pytest.mark.parametrize(
    "fmt,sr,channels",
    [("WAV", 44100, 2), ("FLAC", 22050, 1), ("OGG", 48000, 2), ("MP3", 44100, 2), ("WAV", 8000, 1), ("WAV", 16000, 3)],
)
def test_any_format_rate_and_channels_load_as_16k_mono(tmp_path, fmt, sr, channels):
    t = np.arange(sr) / sr  # one second
    tone = 0.5 * np.sin(2 * np.pi * 440.0 * t)
    data = np.stack([tone] * channels, axis=1).astype(np.float32)
    path = tmp_path / f"tone.{fmt.lower()}"
    sf.write(path, data, sr, format=fmt)

    wave = load_audio(path)

    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - SAMPLE_RATE) < 0.06 * SAMPLE_RATE  # mp3 adds encoder padding
    assert abs(dominant_frequency(wave, SAMPLE_RATE) - 440.0) < 5.0


def test_channels_are_averaged(tmp_path):
    sr = 16000
    left = np.full(sr, 0.5, dtype=np.float32)
    right = np.full(sr, -0.1, dtype=np.float32)
    sf.write(tmp_path / "st.wav", np.stack([left, right], axis=1), sr, subtype="FLOAT")
    assert np.allclose(load_audio(tmp_path / "st.wav"), 0.2, atol=1e-6)


def test_missing_file_names_row_and_file(tmp_path):
    with pytest.raises(AudioLoadError, match=r"row 7: audio file '.*nope\.wav' does not exist"):
        load_audio(tmp_path / "nope.wav", row=7)


def test_corrupt_file_names_row_and_file(tmp_path):
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"RIFF\x00\x00\x00\x00WAVEfmt not really audio" * 4)
    with pytest.raises(AudioLoadError, match=r"row 3: audio file '.*bad\.wav' could not be decoded"):
        load_audio(bad, row=3)


def test_nan_samples_are_refused(tmp_path):
    data = np.zeros(1600, dtype=np.float32)
    data[10] = np.nan
    sf.write(tmp_path / "nan.wav", data, 16000, subtype="FLOAT")
    with pytest.raises(AudioLoadError, match="NaN"):
        load_audio(tmp_path / "nan.wav")


def test_empty_clip_is_padded_with_silence(tmp_path):
    sf.write(tmp_path / "empty.wav", np.zeros(0, dtype=np.float32), 16000)
    wave = load_audio(tmp_path / "empty.wav")
    assert len(wave) == MIN_SAMPLES and not wave.any()


def test_store_keys_by_content_not_name(tmp_path):
    rng = np.random.default_rng(0)
    wave = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "b.wav", wave, 16000, subtype="FLOAT")
    sf.write(tmp_path / "c.wav", wave * 0.5, 16000, subtype="FLOAT")
    store = AudioStore()
    a, b, c = (store.add_file(tmp_path / n) for n in ("a.wav", "b.wav", "c.wav"))
    assert a.key == b.key != c.key
    assert a.key == content_key(load_audio(tmp_path / "a.wav"))
    assert np.array_equal(store.wave(a), load_audio(tmp_path / "a.wav"))


def test_store_reloads_evicted_waves(tmp_path):
    for i in range(3):
        sf.write(tmp_path / f"{i}.wav", np.full(16000, 0.1 * (i + 1), dtype=np.float32), 16000, subtype="FLOAT")
    store = AudioStore(max_bytes=70_000)  # room for one 1 s clip
    clips = [store.add_file(tmp_path / f"{i}.wav") for i in range(3)]
    assert all(np.allclose(store.wave(c), 0.1 * (i + 1)) for i, c in enumerate(clips))


def test_store_keeps_in_memory_arrays_it_cannot_reload():
    store = AudioStore(max_bytes=70_000)
    clips = [store.add_array(np.full(16000, 0.1 * (i + 1), dtype=np.float32)) for i in range(3)]
    assert all(np.allclose(store.wave(c), 0.1 * (i + 1)) for i, c in enumerate(clips))
