"""Which training rows a step uses: a seeded shuffle per epoch, consumed in order, resumable."""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any


class RowSampler:
    """``next(k)`` gives ``k`` rows; every row is used once per epoch before any is used again."""

    def __init__(self, rows: Sequence[Any], seed: int):
        if not rows:
            raise ValueError("no rows to sample from")
        self.rows = list(rows)
        self.seed = seed
        self.epoch = 0
        self.position = 0
        self._order = self._shuffled(0)

    def _shuffled(self, epoch: int) -> list[int]:
        order = list(range(len(self.rows)))
        random.Random(f"{self.seed}:{epoch}").shuffle(order)
        return order

    def next(self, k: int) -> list[Any]:
        out = []
        while len(out) < k:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._shuffled(self.epoch)
            out.append(self.rows[self._order[self.position]])
            self.position += 1
        return out

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._order = self._shuffled(self.epoch)
