"""Loading a training or evaluation file into chat-format examples with audio.

Every row becomes ``{"prompt": [messages with an audio part per clip], "audio": [absolute paths],
"prompt_text": ..., "_row": i, "_source": file, **the other columns}``. Audio paths are resolved
relative to the data file. Each audio file is checked (exists, header readable) here, before any
model loads; a bad row is an error naming the file, the row and the audio file, unless the user
asked to skip bad rows (``on_bad_audio="skip"``), in which case every skipped row is reported.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import soundfile as sf
from audiorl.common.errors import DataError

log = logging.getLogger(__name__)

_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.parquet/.csv file; every row is parsed and its columns' types checked here.

    JSON is read line by line by audiorl (``datasets`` reports a bad line as "An error occurred while
    generating the dataset", an empty file with no reason, a non-UTF-8 byte as a raw UnicodeDecodeError);
    parquet and csv, which carry their own schema, through ``datasets``. Errors name the file, and the
    line or row and the reason.
    """
    ext = os.path.splitext(path)[1].lower()
    if ext not in _LOADERS:
        raise DataError(f"'{path}': unsupported data file type '{ext}' (jsonl, json, parquet or csv)")
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' does not exist")
    if os.path.getsize(path) == 0:
        raise DataError(f"data file '{path}' is empty (0 bytes): it has no rows")
    if _LOADERS[ext] == "json":
        rows = _read_json(path)
    else:
        import datasets

        try:
            rows = datasets.load_dataset(_LOADERS[ext], data_files=path, split="train").to_list()
        except Exception as exc:
            cause = exc.__cause__ or exc.__context__
            reason = f"{type(exc).__name__}: {exc}" + (f" ({type(cause).__name__}: {cause})" if cause else "")
            raise DataError(f"data file '{path}' could not be read: {reason}") from exc
    _check_column_types(path, rows)
    return rows


def _read_json(path: str) -> list[dict[str, Any]]:
    """A JSON array of objects, or JSON lines (one object a line; blank lines allowed); all rows get every column."""
    with open(path, "rb") as f:
        data = f.read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"data file '{path}' line {line}: byte 0x{data[exc.start]:02x} is not UTF-8 text (save the file as UTF-8)"
        ) from None
    if not text.strip():
        raise DataError(f"data file '{path}' holds only whitespace: it has no rows")
    if text.lstrip().startswith("["):
        try:
            items = json.loads(text)
        except ValueError as exc:
            raise DataError(f"data file '{path}': not valid JSON: {exc}") from None
        numbered = list(enumerate(items)) if isinstance(items, list) else [(0, items)]
        where = "row"
    else:
        numbered = []
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                numbered.append((number, json.loads(line)))
            except (ValueError, RecursionError) as exc:
                raise DataError(f"data file '{path}' line {number}: not valid JSON ({exc}): {line[:80]!r}") from None
        where = "line"
    rows, columns = [], {}
    for number, item in numbered:
        if not isinstance(item, dict):
            raise DataError(f"data file '{path}' {where} {number}: a row must be a JSON object, got {type(item).__name__}")
        columns.update(dict.fromkeys(item))
        rows.append(item)
    return [{c: row.get(c) for c in columns} for row in rows]  # as datasets gives them: every row every column


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "text", list: "list", dict: "object"}.get(type(value), type(value).__name__)


def _check_column_types(path: str, rows: list[dict[str, Any]]) -> None:
    """Each column holds one type (or null): a mixed column fails later, in Arrow, after the model has loaded."""
    first: dict[str, tuple[str, int]] = {}
    for i, row in enumerate(rows):
        for column, value in row.items():
            if value is None:
                continue
            kind = _json_type(value)
            seen = first.setdefault(column, (kind, i))
            if seen[0] != kind:
                raise DataError(
                    f"{path} row {i}: column '{column}' is {kind} ({value!r:.60}) but row {seen[1]} has {seen[0]}: "
                    "a column must hold one type"
                )


def _audio_paths(value: Any, base: str) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else [value]
    paths = []
    for item in items:
        if isinstance(item, dict):  # {"path": ...} as written by datasets' Audio feature
            item = item.get("path")
        if not isinstance(item, str) or not item:
            raise ValueError(f"audio entry {item!r} is not a file path")
        paths.append(item if os.path.isabs(item) else os.path.normpath(os.path.join(base, item)))
    return paths


def _check_audio(path: str, max_seconds: float | None = None) -> None:
    """The header only (no decoding): readable, not truncated, no longer than the model's window."""
    if not os.path.isfile(path):
        raise DataError(f"audio file '{path}' does not exist")
    try:
        info = sf.info(path)
    except Exception as exc:
        raise DataError(f"audio file '{path}' is not readable audio: {exc}") from exc
    if info.format == "WAV":
        missing = _wav_missing_bytes(path)
        if missing:  # libsndfile reads what is there: the clip would train as a shorter clip padded with silence
            raise DataError(f"audio file '{path}' is truncated: its header promises {missing} more bytes of samples than it holds")
    if info.frames <= 0:
        raise DataError(f"audio file '{path}' holds no samples")
    if max_seconds is not None and info.frames / info.samplerate > max_seconds + 1e-6:
        raise DataError(
            f"audio file '{path}' is {info.frames / info.samplerate:.1f} s long; the model reads at most "
            f"{max_seconds:g} s per clip (split it, trim it, or set data.on_bad_audio: skip)"
        )


def _wav_missing_bytes(path: str) -> int:
    """How many bytes the WAV's data chunk declares beyond the end of the file (0: complete)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
            return 0  # RF64 and the like: not checked
        order = "little" if head[:4] == b"RIFF" else "big"
        offset = 12
        while offset + 8 <= size:
            f.seek(offset)
            chunk = f.read(8)
            declared = int.from_bytes(chunk[4:8], order)
            if chunk[:4] == b"data":
                if declared in (0, 0xFFFFFFFF):  # streaming writers leave the size unset
                    return 0
                return max(0, declared - (size - offset - 8))
            offset += 8 + declared + (declared & 1)
    return 0


def model_window_seconds(model_dir: str) -> float | None:
    """The longest clip the model at ``model_dir`` reads, from its feature extractor's config (None: unknown).

    Read from ``processor_config.json``'s ``feature_extractor`` or ``preprocessor_config.json``
    (Whisper-style extractors write ``n_samples`` and ``sampling_rate``, or ``chunk_length``), so that
    data can be checked before the model loads.
    """
    for name in ("processor_config.json", "preprocessor_config.json"):
        try:
            with open(os.path.join(model_dir, name), encoding="utf-8") as f:
                config = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(config, dict) and isinstance(config.get("feature_extractor"), dict):
            config = config["feature_extractor"]
        if isinstance(config, dict):
            window = _window(config)
            if window is not None:
                return window
    return None


def _window(config: dict) -> float | None:
    if isinstance(config.get("n_samples"), (int, float)) and isinstance(config.get("sampling_rate"), (int, float)):
        return config["n_samples"] / config["sampling_rate"]
    chunk = config.get("chunk_length")
    return float(chunk) if isinstance(chunk, (int, float)) else None


def build_messages(text: str, audio_paths: list[str], system_prompt: str | None = None) -> list[dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "audio", "audio": p} for p in audio_paths]
    content.append({"type": "text", "text": text})
    messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    messages.append({"role": "user", "content": content})
    return messages


def load_examples(
    path: str,
    *,
    audio_column: str = "audio",
    prompt_column: str = "prompt",
    system_prompt: str | None = None,
    on_bad_audio: str = "raise",
    max_samples: int | None = None,
    max_audio_seconds: float | None = None,
) -> list[dict[str, Any]]:
    """Every row read and checked (columns, types, each clip's header and length) before any model loads.

    ``max_audio_seconds``: the model's window (``model_window_seconds``); a longer clip is a bad row.
    """
    rows = read_rows(path)
    if max_samples is not None:
        rows = rows[:max_samples]
    if not rows:
        raise DataError(f"data file '{path}' has no rows")
    base = os.path.dirname(os.path.abspath(path))
    examples, skipped = [], []
    for i, row in enumerate(rows):
        try:
            for column in (audio_column, prompt_column):
                if row.get(column) is None:
                    raise DataError(f"column '{column}' is missing or empty (columns: {', '.join(row)})")
            if not isinstance(row[prompt_column], str):
                raise DataError(f"column '{prompt_column}' must be text, got {type(row[prompt_column]).__name__}")
            try:
                paths = _audio_paths(row[audio_column], base)
            except ValueError as exc:
                raise DataError(f"column '{audio_column}': {exc}") from None
            for p in paths:
                _check_audio(p, max_audio_seconds)
        except DataError as exc:
            error = DataError(f"{path} row {i}: {exc}")
            if on_bad_audio != "skip":
                raise error from None
            skipped.append(str(error))
            continue
        example = dict(row)
        example.update(
            {
                "prompt": build_messages(row[prompt_column], paths, system_prompt),
                "prompt_text": row[prompt_column],
                audio_column: paths,
                "_row": i,
                "_source": path,
            }
        )
        examples.append(example)
    if skipped:
        log.warning("skipped %d of %d rows of %s (data.on_bad_audio=skip):\n  %s", len(skipped), len(rows), path, "\n  ".join(skipped))
    if not examples:
        raise DataError(f"data file '{path}': every row was skipped")
    return examples
