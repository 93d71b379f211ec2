"""User-style reward functions, named in tests by ``tests.reward_plugins:<name>``."""

from __future__ import annotations

import asyncio


def length_penalty(completions, **_):
    return [-float(len(c)) for c in completions]


def strict_reward(completions):
    return [0.0 for _ in completions]


def only_even(completions, **_):
    return [1.0 if i % 2 == 0 else None for i in range(len(completions))]


def fails_on_boom(completions, **_):
    for c in completions:
        if "boom" in c:
            raise ValueError("cannot score this")
    return [1.0] * len(completions)


def returns_nan(completions, **_):
    return [1.0, float("nan"), 0.0][: len(completions)]


def returns_inf(completions, **_):
    return [float("inf")] * len(completions)


def returns_too_few(completions, **_):
    return [1.0]


def returns_text(completions, **_):
    return ["good"] * len(completions)


def returns_scalar(completions, **_):
    return 1.0


def returns_dict(completions, **_):
    return {i: 0.5 for i in range(len(completions))}  # its keys are not the scores


def returns_set(completions, **_):
    return set(range(len(completions)))


def returns_huge(completions, **_):
    return [1.0, 1e39, 0.0][: len(completions)]  # finite in float64, inf in float32


def returns_numeric_text(completions, **_):
    return ["1.5"] * len(completions)


def returns_matrix(completions, **_):
    import numpy as np

    return np.ones((len(completions), 2))


def returns_arrays_and_tuples(completions, **_):
    import numpy as np
    import torch

    n = len(completions)
    return (np.float32(1.0), *np.arange(n - 2, dtype=np.float64), torch.tensor(-1e9))[:n]


async def async_len(completions, **_):
    await asyncio.sleep(0)
    return [float(len(c)) for c in completions]


def echo_columns(completions, prompts, label, extra):
    assert prompts == ["p1", "p2"][: len(completions)] and len(label) == len(completions)
    return [float(e) for e in extra]


def fails_on_row_3(completions, _row, **_):
    if 3 in _row:
        raise RuntimeError("row 3 is unscorable")
    return [0.0] * len(completions)


def pid(completions, **_):
    import os

    return [float(os.getpid())] * len(completions)


def slow_on_slow(completions, delay: float = 30.0, **_):
    import time

    if any("slow" in c for c in completions):
        time.sleep(delay)
    return [1.0] * len(completions)


class CountingReward:
    """A stateful reward: constructed once with its kwargs, then called like a function."""

    constructed = 0

    def __init__(self, bonus: float = 0.0):
        type(self).constructed += 1
        self.bonus = bonus
        self.calls = 0

    def __call__(self, completions, label):
        self.calls += 1
        return [float(c == lab) + self.bonus for c, lab in zip(completions, label)]


def answer_matches_measured_pitch(completions, waveforms, sampling_rate):
    """A label-free reward: 1 when the answer (high/low) agrees with the pitch measured from the input audio."""
    import numpy as np

    scores = []
    for completion, clips in zip(completions, waveforms):
        wave = clips[0]
        spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
        f0 = np.fft.rfftfreq(wave.size, 1.0 / sampling_rate)[int(np.argmax(spectrum))]
        measured = "high" if f0 > 600 else "low"
        scores.append(1.0 if completion.strip().lower().endswith(measured) else 0.0)
    return scores


def hangs(completions, **_):
    import time

    time.sleep(3600)


class SlowToStart:
    """Constructed slowly (a model load, say): start-up must not count against a call's timeout."""

    def __init__(self, delay: float = 3.0):
        import time

        time.sleep(delay)

    def __call__(self, completions):
        return [1.0] * len(completions)
