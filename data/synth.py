"""The embedded data sets, synthesised offline and deterministically from a seed.

* ``pitch``: pure-ish tones (with harmonics and noise) labelled ``high`` or ``low``.
* ``speech``: sentences spoken by the espeak-ng that ``espeakng-loader`` bundles, with the
  transcript and paralinguistic labels (speed, pitch, voice variant and its gender, language).

Each writes ``OUT/audio/*.wav`` plus ``OUT/train.jsonl`` and ``OUT/eval.jsonl`` (audio paths are
relative to the JSONL file) that ``datasets`` loads; ``fmt="parquet"`` writes parquet instead.
"""

from __future__ import annotations

import json
import os
import zlib
from collections.abc import Callable, Iterable

import numpy as np
from audiorl.common.errors import ConfigError
from audiorl.data.audio import SAMPLE_RATE, resample, save_audio

PITCH_PROMPTS = [
    "Is the pitch of this tone high or low?",
    "Listen to the tone. Is it high or low?",
    "Is this a high tone or a low tone?",
]
PITCH_LABELS = ("high", "low")
# Fundamental-frequency ranges (Hz); the gap between them keeps the labels unambiguous.
PITCH_RANGES = {"low": (120.0, 360.0), "high": (900.0, 2400.0)}

ADJECTIVES = ["small", "quiet", "bright", "old", "young", "green", "happy", "heavy", "cold", "warm", "red", "tall"]
NOUNS = ["cat", "dog", "bird", "river", "teacher", "child", "garden", "window", "city", "train", "letter", "song"]
VERBS = ["sees", "finds", "likes", "follows", "paints", "hears", "opens", "carries", "watches", "visits"]
PLACES = ["near the house", "in the morning", "by the sea", "after school", "on the hill", "at night", "in the park"]
ZH_SENTENCES = [
    "今天天气很好", "我们去公园散步", "他喜欢听音乐", "老师在教室里上课", "这本书非常有意思",
    "明天早上八点见", "小猫在窗边睡觉", "我想喝一杯热茶",
]

SPEECH_TASKS = {
    "asr": "Transcribe the speech.",
    "gender": "Is the speaker male or female?",
    "speed": "Is the speech slow, normal or fast?",
    "pitch": "Is the voice low, mid or high pitched?",
}
SPEED_RATES = {"slow": 120, "normal": 170, "fast": 240}  # espeak words per minute
PITCH_LEVELS = {"low": 25, "mid": 50, "high": 80}  # espeak pitch (0-99)


def corpus_text() -> list[str]:
    """Every string the embedded tasks put in prompts and answers (trains the tiny tokenizer)."""
    think = [
        "<think>I compare the pitch with a middle tone.</think><answer>high</answer>",
        "<think>The tone sounds low.</think><answer>low</answer>",
    ]
    sentences = [f"The {a} {n} {v} the {n2} {p}." for a in ADJECTIVES for n, n2 in zip(NOUNS, NOUNS[1:]) for v in VERBS[:3] for p in PLACES[:2]]
    labels = ["high low mid male female slow normal fast yes no", " ".join(ADJECTIVES + NOUNS + VERBS + PLACES)]
    return PITCH_PROMPTS + list(SPEECH_TASKS.values()) + think + sentences + labels + ZH_SENTENCES


def tone(freq: float, duration: float, rng: np.random.Generator) -> np.ndarray:
    t = np.arange(int(duration * SAMPLE_RATE)) / SAMPLE_RATE
    wave = np.sin(2 * np.pi * freq * t)
    for k, amp in ((2, rng.uniform(0.1, 0.4)), (3, rng.uniform(0.0, 0.2))):
        if freq * k < SAMPLE_RATE / 2:
            wave += amp * np.sin(2 * np.pi * freq * k * t + rng.uniform(0, 2 * np.pi))
    fade = min(len(t) // 10, int(0.02 * SAMPLE_RATE))
    envelope = np.ones_like(t)
    envelope[:fade] = np.linspace(0, 1, fade)
    envelope[len(t) - fade :] = np.linspace(1, 0, fade)
    wave = wave * envelope / np.abs(wave).max() * rng.uniform(0.3, 0.9)
    wave += rng.normal(0, rng.uniform(0.002, 0.02), size=wave.shape)
    return np.clip(wave, -1, 1).astype(np.float32)


def _balanced_labels(n: int, labels: tuple[str, ...], rng: np.random.Generator) -> list[str]:
    out = [labels[i % len(labels)] for i in range(n)]
    rng.shuffle(out)
    return out


def _pitch_rows(split: str, n: int, rng: np.random.Generator, out_dir: str) -> list[dict]:
    rows = []
    for i, label in enumerate(_balanced_labels(n, PITCH_LABELS, rng)):
        low, high = PITCH_RANGES[label]
        freq = float(np.exp(rng.uniform(np.log(low), np.log(high))))
        duration = float(rng.uniform(0.6, 1.6))
        rel = f"audio/{split}_{i:05d}.wav"
        save_audio(os.path.join(out_dir, rel), tone(freq, duration, rng))
        rows.append(
            {
                "id": f"pitch-{split}-{i:05d}",
                "audio": rel,
                "prompt": PITCH_PROMPTS[int(rng.integers(len(PITCH_PROMPTS)))],
                "label": label,
                "choices": list(PITCH_LABELS),
                "freq_hz": round(freq, 2),
                "duration_s": round(duration, 3),
            }
        )
    return rows


def _english_sentence(rng: np.random.Generator) -> str:
    pick = lambda xs: xs[int(rng.integers(len(xs)))]  # noqa: E731
    return f"The {pick(ADJECTIVES)} {pick(NOUNS)} {pick(VERBS)} the {pick(NOUNS)} {pick(PLACES)}."


def _speech_rows(split: str, n: int, rng: np.random.Generator, out_dir: str, tasks: Iterable[str] | None = None) -> list[dict]:
    from audiorl.data.espeak import synthesize, voice_variants

    variants = voice_variants()
    tasks = list(tasks or SPEECH_TASKS)
    unknown = [t for t in tasks if t not in SPEECH_TASKS]
    if unknown:
        raise ValueError(f"unknown speech task(s) {', '.join(unknown)}; choose from {', '.join(SPEECH_TASKS)}")
    rows = []
    for i in range(n):
        chinese = "asr" in tasks and rng.uniform() < 0.15
        text = ZH_SENTENCES[int(rng.integers(len(ZH_SENTENCES)))] if chinese else _english_sentence(rng)
        language = "zh" if chinese else "en"
        variant, gender = variants[int(rng.integers(len(variants)))]
        speed = list(SPEED_RATES)[int(rng.integers(len(SPEED_RATES)))]
        pitch = list(PITCH_LEVELS)[int(rng.integers(len(PITCH_LEVELS)))]
        voice = f"{'cmn' if chinese else 'en'}+{variant}"
        wave, sr = synthesize(text, voice=voice, rate_wpm=SPEED_RATES[speed], pitch=PITCH_LEVELS[pitch])
        wave = resample(wave, sr)
        task = "asr" if chinese else tasks[i % len(tasks)]
        labels = {"asr": text, "gender": gender, "speed": speed, "pitch": pitch}
        rel = f"audio/{split}_{i:05d}.wav"
        save_audio(os.path.join(out_dir, rel), wave)
        rows.append(
            {
                "id": f"speech-{split}-{i:05d}",
                "audio": rel,
                "task": task,
                "prompt": SPEECH_TASKS[task],
                "label": labels[task],
                "transcript": text,
                "language": language,
                "voice": voice,
                "gender": gender,
                "speed": speed,
                "pitch": pitch,
                "duration_s": round(len(wave) / SAMPLE_RATE, 3),
            }
        )
    return rows


TASKS: dict[str, Callable[[str, int, np.random.Generator, str], list[dict]]] = {
    "pitch": _pitch_rows,
    "speech": _speech_rows,
}


def write_rows(path: str, rows: Iterable[dict], fmt: str = "jsonl") -> str:
    rows = list(rows)
    if fmt == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    else:
        raise ValueError(f"unknown format '{fmt}' (jsonl or parquet)")
    return path


def label_pairs(rows: Iterable[dict], template: str, seed: int = 0) -> list[dict]:
    """Preference pairs from labelled rows: ``template`` with the right label (chosen) vs a wrong choice (rejected).

    Rows without a ``choices`` column holding the label and another option give no pair.
    """
    rng = np.random.default_rng([seed, 7])
    pairs = []
    for row in rows:
        wrong = [c for c in row.get("choices") or [] if c != row["label"]]
        if row.get("label") not in (row.get("choices") or []) or not wrong:
            continue
        other = wrong[int(rng.integers(len(wrong)))]
        pairs.append({**row, "chosen": template.format(**row), "rejected": template.format(**{**row, "label": other})})
    return pairs


def make_dataset(
    out_dir: str,
    task: str = "pitch",
    seed: int = 0,
    n_train: int = 256,
    n_eval: int = 64,
    fmt: str = "jsonl",
    pairs_template: str | None = None,
    speech_tasks: Iterable[str] | None = None,
) -> dict[str, str]:
    """Write the embedded ``task`` data set to ``out_dir``; returns {"train": path, "eval": path[, "pairs": path]}.

    ``pairs_template``: also write ``pairs.<fmt>``, a preference pair per training row (``label_pairs``).
    ``speech_tasks``: the speech set's questions (asr, gender, speed, pitch; default all, in turn).
    """
    if task not in TASKS:
        raise ValueError(f"unknown task '{task}'; choose from {', '.join(TASKS)}")
    for name, n in (("n_train", n_train), ("n_eval", n_eval)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:  # an empty file would fail only when it is read
            raise ConfigError(f"make_dataset: {name} must be a positive number of rows, got {n!r}")
    os.makedirs(out_dir, exist_ok=True)
    marker = os.path.join(out_dir, INCOMPLETE)
    with open(marker, "w") as f:  # removed once every file is written: a kill in between leaves it
        json.dump({"task": task, "seed": seed, "n_train": n_train, "n_eval": n_eval, "pid": os.getpid()}, f)
    paths = {}
    for split, n, split_seed in (("train", n_train, seed), ("eval", n_eval, seed + 1_000_003)):
        rng = np.random.default_rng([split_seed, zlib.crc32(task.encode())])
        rows = TASKS[task](split, n, rng, out_dir, **({"tasks": speech_tasks} if task == "speech" else {}))
        if split == "train" and pairs_template:
            paths["pairs"] = write_rows(os.path.join(out_dir, f"pairs.{fmt}"), label_pairs(rows, pairs_template, seed), fmt)
        paths[split] = write_rows(os.path.join(out_dir, f"{split}.{fmt}"), rows, fmt)
    os.remove(marker)
    return paths


INCOMPLETE = ".synthesis-incomplete"


def synthesis_incomplete(out_dir: str) -> str | None:
    """The marker's path if a synthesis into ``out_dir`` started and did not finish, else None."""
    marker = os.path.join(out_dir, INCOMPLETE)
    return marker if os.path.exists(marker) else None
