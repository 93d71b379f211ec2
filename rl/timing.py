"""Where a step's time goes: named phases, timed with a monotonic clock, reported as ``timing/<phase>_s``."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager

PHASES = ("generation", "rewards", "forward_backward", "optimizer")


class PhaseTimer:
    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] += time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """Each phase, ``other`` (everything else) and the whole ``step_time``."""
        total = time.perf_counter() - self.start
        out = {f"timing/{p}_s": self.seconds.get(p, 0.0) for p in PHASES}
        out.update({f"timing/{p}_s": s for p, s in self.seconds.items() if p not in PHASES})
        out["timing/other_s"] = max(total - sum(self.seconds.get(p, 0.0) for p in PHASES), 0.0)
        out["step_time"] = total
        return out
