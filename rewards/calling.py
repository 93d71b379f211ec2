"""Calling one reward on a batch: chunks, a worker pool, a per-call timeout and ``on_error``.

A reward is called on the whole batch, or on chunks of ``batch_size``; with ``workers > 0`` the
chunks run in that many spawned processes (for CPU-heavy rewards: the trainer's process keeps its
cores' GIL). ``timeout_s`` bounds each call; a call that overruns is abandoned (a worker pool is
terminated and rebuilt, an in-process call's thread is left to finish on its own).

When a call raises or times out, ``on_error`` decides: ``raise`` (default) re-runs the chunk sample
by sample to name the sample at fault; ``zero`` / ``skip`` re-run it sample by sample too and give
the failing samples 0.0 / None (not applicable), with a warning naming the reward and the samples.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import multiprocessing
import sys
import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from audiorl.common.errors import ConfigError, RewardError
from audiorl.rewards.registry import ON_REQUEST_ARGS, RewardFn, call_signature, resolve_reward

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "zero", "skip")
# The largest reward value accepted. With weights within +-1e6 (aggregate.MAX_WEIGHT) a weighted sum
# stays below ~1e15, whose square (in a group's variance) is far inside float32's range (3.4e38);
# 1e39 used to pass the finite check and overflow there.
MAX_REWARD = 1e9
EXECUTION_OPTIONS = ("on_error", "timeout_s", "workers", "batch_size")  # per-reward settings in a recipe


class RewardTimeout(Exception):
    pass


def _snippet(text: object, limit: int = 80) -> str:
    text = str(text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def run_sync(fn, args: dict[str, Any]) -> Any:
    """Call a sync or async reward; an awaitable is run to completion on a fresh event loop."""
    out = fn(**args)
    if inspect.isawaitable(out):
        out = asyncio.run(_await(out))
    return out


async def _await(awaitable):
    return await awaitable


def _in_running_loop() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _call_in_thread(fn, args: dict[str, Any], timeout: float | None) -> Any:
    """Run in a daemon thread: bounds the wait, and gives async rewards a loop when the caller already runs one."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["out"] = run_sync(fn, args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True, name="audiorl-reward")
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise RewardTimeout(f"no answer within {timeout:g} s")
    if "exc" in box:
        raise box["exc"]
    return box["out"]


# ----------------------------------------------------------------- worker pool
_WORKER_REWARDS: dict[str, Any] = {}


def _init_worker(name: str, kwargs: dict[str, Any], path: list[str]) -> None:
    sys.path[:] = path  # the parent's import path: module:function plug-ins resolve the same way
    fn = resolve_reward(name)
    _WORKER_REWARDS[name] = fn(**kwargs) if inspect.isclass(fn) else fn


def _run_in_worker(name: str, args: dict[str, Any]) -> Any:
    return run_sync(_WORKER_REWARDS[name], args)


@dataclass
class BoundReward:
    """A resolved reward with its weight, YAML kwargs and execution options."""

    name: str  # how it is logged
    spec_name: str  # how it was named in the recipe (what a worker process resolves)
    fn: RewardFn
    weight: float
    kwargs: Mapping[str, Any] = field(default_factory=dict)
    on_error: str = "raise"
    timeout_s: float | None = None
    workers: int = 0
    batch_size: int | None = None
    _instance: Any = field(default=None, init=False, repr=False)
    _pool: Any = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.on_error not in ON_ERROR:
            raise ConfigError(f"reward '{self.name}': on_error is '{self.on_error}'; choose one of: {', '.join(ON_ERROR)}")
        if self.timeout_s is not None and not self.timeout_s > 0:
            raise ConfigError(f"reward '{self.name}': timeout_s must be positive (or null), got {self.timeout_s}")
        if self.workers < 0:
            raise ConfigError(f"reward '{self.name}': workers must be >= 0, got {self.workers}")
        if self.batch_size is not None and self.batch_size <= 0:
            raise ConfigError(f"reward '{self.name}': batch_size must be positive (or null), got {self.batch_size}")
        sig = call_signature(self.fn)
        self._params = dict(sig.parameters) if sig is not None else {}
        self._takes_all = sig is None or any(p.kind is p.VAR_KEYWORD for p in self._params.values())

    def accepts(self, arg: str) -> bool:
        if arg in ON_REQUEST_ARGS:
            return arg in self._params
        return self._takes_all or arg in self._params

    @property
    def callable(self) -> RewardFn:
        """The function to call; a class reward is constructed here, once, with its kwargs."""
        if not inspect.isclass(self.fn):
            return self.fn
        if self._instance is None:
            try:
                self._instance = self.fn(**self.kwargs)
            except Exception as exc:
                raise RewardError(f"reward '{self.name}' could not be constructed: {type(exc).__name__}: {exc}") from exc
        return self._instance

    def call_kwargs(self) -> dict[str, Any]:
        return {} if inspect.isclass(self.fn) else dict(self.kwargs)

    def close(self) -> None:
        if self._pool is not None:
            self._pool.terminate()
            self._pool = None

    # ----------------------------------------------------------------- calling
    def __call__(self, samples: dict[str, list], constants: dict[str, Any]) -> tuple[list[float], int]:
        """Values per sample (NaN: not applicable) and the number of samples that failed.

        ``samples``: per-sample lists (completions, prompts, columns, waveforms); ``constants``: the rest.
        """
        completions = samples["completions"]
        n = len(completions)
        args = _Args(samples, {**constants, **self.call_kwargs()})
        size = self.batch_size or (math.ceil(n / self.workers) if self.workers else n) or 1
        chunks = [slice(start, min(start + size, n)) for start in range(0, n, size)]
        pending = [(rows, self._submit(args.rows(rows))) for rows in chunks]
        values: list[float] = []
        failed = 0
        for rows, handle in pending:
            try:
                values += self._check(self._result(handle), rows, completions)
            except RewardError:
                raise
            except Exception as exc:  # noqa: BLE001 - a reward may raise anything; we name it and the samples
                chunk_values, chunk_failed = self._recover(args, rows, completions, exc)
                values += chunk_values
                failed += chunk_failed
        return values, failed

    def _submit(self, args: dict[str, Any]):
        if self.workers:
            if self._pool is None:
                context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
                self._pool = context.Pool(
                    self.workers, initializer=_init_worker, initargs=(self.spec_name, dict(self.kwargs), list(sys.path))
                )
            return self._pool.apply_async(_run_in_worker, (self.spec_name, args))
        return args  # called when its result is asked for, one chunk at a time

    def _result(self, handle) -> Any:
        if self.workers:
            try:
                return handle.get(self.timeout_s)
            except multiprocessing.TimeoutError:
                self.close()  # the only way to stop a running task: the pool goes, and is rebuilt on the next call
                raise RewardTimeout(f"no answer within {self.timeout_s:g} s") from None
        fn = self.callable
        if self.timeout_s is not None or _in_running_loop():
            return _call_in_thread(fn, handle, self.timeout_s)
        return run_sync(fn, handle)

    def _run_one(self, args: dict[str, Any], i: int) -> Any:
        return self._result(self._submit(args.rows(slice(i, i + 1))))

    def _recover(self, args, rows: slice, completions, exc: Exception) -> tuple[list[float], int]:
        """After a chunk failed: name the failing sample (raise) or score the others (zero/skip)."""
        if isinstance(exc, RewardTimeout) and self.on_error == "raise":
            raise RewardError(
                f"reward '{self.name}' timed out ({exc}) on samples {rows.start}-{rows.stop - 1} "
                f"(first completion {_snippet(completions[rows.start])!r}); raise its timeout_s or set on_error"
            ) from None
        values: list[float] = []
        failures: list[str] = []
        for i in range(rows.start, rows.stop):
            try:
                values += self._check(self._run_one(args, i), slice(i, i + 1), completions)
            except RewardError:
                raise
            except Exception as sample_exc:  # noqa: BLE001
                where = f"{type(sample_exc).__name__}: {sample_exc} on sample {i} (completion {_snippet(completions[i])!r})"
                if self.on_error == "raise":
                    raise RewardError(f"reward '{self.name}' raised {where}") from sample_exc
                failures.append(where)
                values.append(0.0 if self.on_error == "zero" else math.nan)
        if not failures and self.on_error == "raise":
            raise RewardError(f"reward '{self.name}' raised {type(exc).__name__}: {exc} on samples {rows.start}-{rows.stop - 1}") from exc
        if failures:
            log.warning(
                "reward '%s' failed on %d sample(s), scored %s (on_error=%s); first: %s",
                self.name, len(failures), "0" if self.on_error == "zero" else "as not applicable", self.on_error, failures[0],
            )
        return values, len(failures)

    def _check(self, out: Any, rows: slice, completions) -> list[float]:
        """One finite float within +-MAX_REWARD (or NaN for None) per sample of ``rows``; anything else names
        the reward and the sample."""
        n = rows.stop - rows.start
        # A mapping or set has a length too, but no order: {i: score} would give its keys as the rewards.
        if out is None or isinstance(out, (str, bytes, Mapping, Set)) or not hasattr(out, "__len__") or not hasattr(out, "__iter__"):
            raise RewardError(
                f"reward '{self.name}' returned {type(out).__name__}; it must return a list of {n} numbers "
                "(one per completion, in order)"
            )
        if getattr(out, "ndim", 1) != 1:  # an array or tensor
            raise RewardError(
                f"reward '{self.name}' returned an array of shape {tuple(out.shape)}; it must be a flat list of {n} numbers"
            )
        out = list(out)
        if len(out) != n:
            raise RewardError(f"reward '{self.name}' returned {len(out)} values for {n} completions")
        result = []
        for i, v in zip(range(rows.start, rows.stop), out):
            if v is None:
                result.append(math.nan)
                continue
            try:
                if isinstance(v, (str, bytes)):  # float("1.5") would pass: text is not a score
                    raise TypeError
                f = float(v)
            except (TypeError, ValueError, OverflowError):
                raise RewardError(
                    f"reward '{self.name}' returned {v!r} for sample {i} (completion {_snippet(completions[i])!r}); "
                    "rewards must be numbers or None"
                ) from None
            if not math.isfinite(f):
                raise RewardError(
                    f"reward '{self.name}' returned {f} for sample {i} (completion {_snippet(completions[i])!r}); "
                    "return None for 'not applicable' instead of NaN/inf"
                )
            if abs(f) > MAX_REWARD:
                raise RewardError(
                    f"reward '{self.name}' returned {f:g} for sample {i} (completion {_snippet(completions[i])!r}); "
                    f"rewards must lie within +-{MAX_REWARD:g} (beyond, float32 group statistics overflow and the "
                    "policy silently stops learning): scale it down"
                )
            result.append(f)
        return result


@dataclass(frozen=True)
class _Args:
    samples: dict[str, list]
    constants: dict[str, Any]

    def rows(self, rows: slice) -> dict[str, Any]:
        return {**{k: v[rows] for k, v in self.samples.items()}, **self.constants}
