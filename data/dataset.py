"""Loading a training or evaluation file into chat-format examples with audio.

Every row becomes ``{"prompt": [messages with an audio part per clip], "audio": [absolute paths],
"prompt_text": ..., "_row": i, "_source": file, **the other columns}``. Audio paths are resolved
relative to the data file. Each audio file is checked (exists, header readable) here, before any
model loads; a bad row is an error naming the file, the row and the audio file, unless the user
asked to skip bad rows (``on_bad_audio="skip"``), in which case every skipped row is reported.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import soundfile as sf
from audiorl.common.errors import DataError

log = logging.getLogger(__name__)

_LOADERS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}


def read_rows(path: str) -> list[dict[str, Any]]:
    """Rows of a .jsonl/.json/.parquet/.csv file, through ``datasets``."""
    import datasets

    ext = os.path.splitext(path)[1].lower()
    if ext not in _LOADERS:
        raise DataError(f"'{path}': unsupported data file type '{ext}' (jsonl, json, parquet or csv)")
    if not os.path.isfile(path):
        raise DataError(f"data file '{path}' does not exist")
    try:
        ds = datasets.load_dataset(_LOADERS[ext], data_files=path, split="train")
    except Exception as exc:
        raise DataError(f"data file '{path}' could not be read: {exc}") from exc
    return ds.to_list()


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


def _check_audio(path: str) -> None:
    if not os.path.isfile(path):
        raise DataError(f"audio file '{path}' does not exist")
    try:
        sf.info(path)
    except Exception as exc:
        raise DataError(f"audio file '{path}' is not readable audio: {exc}") from exc


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
) -> list[dict[str, Any]]:
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
                _check_audio(p)
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
