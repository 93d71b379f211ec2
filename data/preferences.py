"""Preference pairs with audio (offline DPO): a data file of prompt + audio + chosen + rejected rows.

Rows are read and checked like training rows (``load_examples``: audio files exist and decode,
prompt present) and each must hold non-empty chosen and rejected texts; errors name the file, the
row and the column. Pairs whose two answers are identical teach nothing and are dropped (counted).
"""

from __future__ import annotations

import logging
from typing import Any

from audiorl.common.errors import DataError
from audiorl.data.dataset import load_examples

log = logging.getLogger(__name__)


def load_pairs(path: str, *, chosen_column: str = "chosen", rejected_column: str = "rejected", **examples: Any) -> list[dict[str, Any]]:
    """The pairs of ``path`` as examples (``load_examples`` rows) with ``chosen`` and ``rejected`` texts."""
    rows = load_examples(path, **examples)
    pairs, identical = [], 0
    for row in rows:
        for column in (chosen_column, rejected_column):
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                what = "missing" if value is None else ("empty" if isinstance(value, str) else f"{type(value).__name__}, not text")
                raise DataError(f"{path} row {row['_row']}: column '{column}' is {what}")
        if row[chosen_column] == row[rejected_column]:
            identical += 1
            continue
        pairs.append({**row, "chosen": row[chosen_column], "rejected": row[rejected_column]})
    if identical:
        log.warning("%s: dropped %d pairs whose chosen and rejected texts are identical", path, identical)
    if not pairs:
        raise DataError(f"data file '{path}' gives no preference pair ({len(rows)} rows, {identical} identical)")
    return pairs
