"""Embedded data sets (deterministic, offline, loadable by `datasets`) and loading rows into chat examples."""

from __future__ import annotations

import hashlib
import json
import os

import datasets
import numpy as np
import pytest
from audiorl.common.errors import DataError
from audiorl.data.audio import SAMPLE_RATE, load_audio
from audiorl.data.dataset import load_examples
from audiorl.data.espeak import synthesize
from audiorl.data.synth import PITCH_RANGES, make_dataset


def tree_digest(folder: str) -> str:
    h = hashlib.sha256()
    for root, _, files in sorted(os.walk(folder)):
        for name in sorted(files):
            path = os.path.join(root, name)
            h.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


@pytest.mark.parametrize("task", ["pitch", "speech"])
def test_same_seed_same_bytes_other_seed_other_data(tmp_path, task):
    a = make_dataset(str(tmp_path / "a"), task, seed=3, n_train=6, n_eval=2)
    b = make_dataset(str(tmp_path / "b"), task, seed=3, n_train=6, n_eval=2)
    c = make_dataset(str(tmp_path / "c"), task, seed=4, n_train=6, n_eval=2)
    assert tree_digest(os.path.dirname(a["train"])) == tree_digest(os.path.dirname(b["train"]))
    assert open(a["train"]).read() != open(c["train"]).read()


def test_pitch_rows_are_balanced_and_labelled_by_frequency(pitch_data):
    ds = datasets.load_dataset("json", data_files=pitch_data, split="train")
    assert sorted(set(ds["label"])) == ["high", "low"]
    assert ds["label"].count("high") == ds["label"].count("low")
    for row in ds:
        low, high = PITCH_RANGES[row["label"]]
        assert low <= row["freq_hz"] <= high
        wave = load_audio(os.path.join(os.path.dirname(pitch_data["train"]), row["audio"]))
        peak = np.fft.rfftfreq(len(wave), 1 / SAMPLE_RATE)[np.abs(np.fft.rfft(wave)).argmax()]
        assert abs(peak - row["freq_hz"]) < 0.05 * row["freq_hz"]


def test_parquet_output_loads_with_datasets(tmp_path):
    paths = make_dataset(str(tmp_path), "pitch", seed=0, n_train=4, n_eval=2, fmt="parquet")
    ds = datasets.load_dataset("parquet", data_files=paths)
    assert ds["train"].num_rows == 4 and ds["eval"].num_rows == 2


def f0(wave: np.ndarray, sr: int) -> float:
    """Median autocorrelation pitch over voiced 40 ms frames."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    rms_max = max(np.sqrt(np.mean(wave[i : i + frame] ** 2)) for i in range(0, len(wave) - frame, hop))
    pitches = []
    for i in range(0, len(wave) - frame, hop):
        x = wave[i : i + frame]
        if np.sqrt(np.mean(x**2)) < 0.1 * rms_max:
            continue
        ac = np.correlate(x, x, "full")[frame - 1 :]
        lo, hi = sr // 400, sr // 60
        lag = lo + int(np.argmax(ac[lo:hi]))
        if ac[lag] > 0.5 * ac[0]:
            pitches.append(sr / lag)
    return float(np.median(pitches))


def test_espeak_labels_are_audible():
    text = "The quiet cat sees the dog near the house."
    male, sr = synthesize(text, "en+m3", pitch=50)
    female, _ = synthesize(text, "en+f3", pitch=50)
    low, _ = synthesize(text, "en+m3", pitch=25)
    high, _ = synthesize(text, "en+m3", pitch=80)
    slow, _ = synthesize(text, "en+m3", rate_wpm=120)
    fast, _ = synthesize(text, "en+m3", rate_wpm=240)
    assert f0(female, sr) > f0(male, sr) + 40
    assert f0(high, sr) > f0(low, sr) * 1.3
    assert len(slow) > 1.6 * len(fast)
    again, _ = synthesize(text, "en+f3", pitch=50)
    assert np.array_equal(female, again)


def test_speech_rows_carry_transcripts_and_labels(speech_data):
    rows = [json.loads(line) for line in open(speech_data["train"])]
    for row in rows:
        assert row["label"] == {"asr": row["transcript"], "gender": row["gender"], "speed": row["speed"], "pitch": row["pitch"]}[row["task"]]
        assert row["gender"] == ("female" if "+f" in row["voice"] else "male")
    assert any(r["language"] == "zh" for r in rows) and any(r["language"] == "en" for r in rows)


def test_examples_are_chat_messages_with_absolute_audio(pitch_data):
    examples = load_examples(pitch_data["train"])
    first = examples[0]
    assert first["prompt"][-1]["role"] == "user"
    audio_part, text_part = first["prompt"][-1]["content"]
    assert audio_part["type"] == "audio" and os.path.isabs(audio_part["audio"]) and os.path.isfile(audio_part["audio"])
    assert text_part == {"type": "text", "text": first["prompt_text"]}
    assert first["_row"] == 0 and first["label"] in ("high", "low")


def _rows(data: dict[str, str], n: int) -> list[dict]:
    base = os.path.dirname(data["train"])
    rows = [json.loads(line) for line in open(data["train"])][:n]
    for row in rows:
        row["audio"] = os.path.join(base, row["audio"])
    return rows


def _write_rows(path, rows):
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")


def test_missing_audio_names_file_row_and_path(tmp_path, pitch_data):
    rows = _rows(pitch_data, 3)
    rows[2]["audio"] = "gone.wav"
    _write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl row 2: audio file '.*gone\.wav' does not exist"):
        load_examples(str(tmp_path / "d.jsonl"))


def test_corrupt_audio_is_skipped_only_when_asked(tmp_path, pitch_data, caplog):
    rows = _rows(pitch_data, 3)
    (tmp_path / "bad.wav").write_bytes(b"not audio at all" * 10)
    rows[1]["audio"] = str(tmp_path / "bad.wav")
    _write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 1: audio file '.*bad\.wav' is not readable audio"):
        load_examples(str(tmp_path / "d.jsonl"))
    examples = load_examples(str(tmp_path / "d.jsonl"), on_bad_audio="skip")
    assert [e["_row"] for e in examples] == [0, 2]
    assert "skipped 1 of 3 rows" in caplog.text and "bad.wav" in caplog.text


def test_missing_prompt_column_is_named(tmp_path, pitch_data):
    rows = _rows(pitch_data, 2)
    del rows[1]["prompt"]
    _write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"row 1: column 'prompt' is missing"):
        load_examples(str(tmp_path / "d.jsonl"), on_bad_audio="raise")


# ----------------------------------------------------------- the data pass before load
def _clip(path, seconds, sr=16000):
    import numpy as np
    import soundfile as sf

    sf.write(str(path), np.zeros(int(seconds * sr), dtype=np.float32), sr)
    return str(path)


@pytest.mark.parametrize(
    "content,message",
    [
        (b"", r"data file '.*d\.jsonl' is empty \(0 bytes\)"),
        (b"\n  \n", r"d\.jsonl' holds only whitespace"),
        (b'{"prompt": "a", "audio": "x.wav"}\n{"prompt": "b", oops}\n', r"d\.jsonl' line 2: not valid JSON"),
        (b'{"prompt": "a"}\n{"prompt": "caf\xe9"}\n', r"d\.jsonl' line 2: byte 0xe9 is not UTF-8 text"),
        (b'{"prompt": "a"}\n[1, 2]\n', r"d\.jsonl' line 2: a row must be a JSON object, got list"),
        (b'{"prompt": "a", "label": "high"}\n{"prompt": "b", "label": 3}\n', r"d\.jsonl row 1: column 'label' is number .* but row 0 has text"),
    ],
)
def test_unreadable_data_files_name_the_file_line_and_reason(tmp_path, content, message):
    (tmp_path / "d.jsonl").write_bytes(content)
    with pytest.raises(DataError, match=message):
        load_examples(str(tmp_path / "d.jsonl"))


def test_json_arrays_and_lines_read_alike(tmp_path, pitch_data):
    rows = _rows(pitch_data, 3)
    (tmp_path / "a.json").write_text(json.dumps(rows))
    _write_rows(tmp_path / "l.jsonl", rows)
    assert [e["audio"] for e in load_examples(str(tmp_path / "a.json"))] == [e["audio"] for e in load_examples(str(tmp_path / "l.jsonl"))]


def test_every_row_is_checked_and_bad_clips_skipped_when_asked(tmp_path, pitch_data, caplog):
    """Truncated WAVs and clips over the model's window are bad rows before load (with on_bad_audio: skip, skipped)."""
    from audiorl.data.dataset import model_window_seconds

    rows = _rows(pitch_data, 4)
    full = open(rows[0]["audio"], "rb").read()
    (tmp_path / "cut.wav").write_bytes(full[: len(full) // 2])
    rows[1]["audio"] = str(tmp_path / "cut.wav")
    rows[3]["audio"] = _clip(tmp_path / "long.wav", 3.0)
    _write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl row 1: audio file '.*cut\.wav' is truncated"):
        load_examples(str(tmp_path / "d.jsonl"), max_audio_seconds=2.0)
    rows[1]["audio"] = rows[0]["audio"]
    _write_rows(tmp_path / "d.jsonl", rows)
    with pytest.raises(DataError, match=r"d\.jsonl row 3: audio file '.*long\.wav' is 3\.0 s long; the model reads at most 2 s"):
        load_examples(str(tmp_path / "d.jsonl"), max_audio_seconds=2.0)
    assert len(load_examples(str(tmp_path / "d.jsonl"))) == 4  # no window known: no length check
    rows[1]["audio"] = str(tmp_path / "cut.wav")
    _write_rows(tmp_path / "d.jsonl", rows)
    kept = load_examples(str(tmp_path / "d.jsonl"), max_audio_seconds=2.0, on_bad_audio="skip")
    assert [e["_row"] for e in kept] == [0, 2]
    assert "skipped 2 of 4 rows" in caplog.text and "truncated" in caplog.text and "long.wav" in caplog.text
    model = tmp_path / "m"
    model.mkdir()
    (model / "processor_config.json").write_text(json.dumps({"feature_extractor": {"n_samples": 480000, "sampling_rate": 16000}}))
    assert model_window_seconds(str(model)) == 30.0 and model_window_seconds(str(tmp_path / "none")) is None
