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
