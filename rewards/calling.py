"""Calling one reward on a batch: chunks, a worker pool, a per-call timeout and ``on_error``.

A reward is called on the whole batch, or on chunks of ``batch_size``; with ``workers > 0`` the
chunks run in that many spawned processes (for CPU-heavy rewards: the trainer's process keeps its
cores' GIL). ``timeout_s`` bounds each call and must be able to stop its work, which only a process
can: a reward with a timeout runs in worker processes (one when ``workers`` is 0), and a call that
overruns has its process killed and replaced (rewards/workers.py). Start-up (spawn, imports, a
class reward's constructor) does not count against a call's timeout.

When a call raises or times out, ``on_error`` decides: ``raise`` (default) re-runs the chunk sample
by sample to name the sample at fault (a timeout is raised at once); ``zero`` / ``skip`` re-run it
sample by sample and give the failing samples 0.0 / None (not applicable), with a warning naming
the reward and the samples. The re-runs stop after two of them time out: a call costs at most three
times its timeout however many samples hang, and the samples left unrun count as failing.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from typing import Any

from audiorl.common.errors import ConfigError, RewardError
from audiorl.rewards.registry import ON_REQUEST_ARGS, RewardFn, call_signature
from audiorl.rewards.workers import FAILED, OK, TIMED_OUT, WorkerPool

log = logging.getLogger(__name__)

ON_ERROR = ("raise", "zero", "skip")
# The largest reward value accepted. With weights within +-1e6 (aggregate.MAX_WEIGHT) a weighted sum
# stays below ~1e15, whose square (in a group's variance) is far inside float32's range (3.4e38);
# 1e39 used to pass the finite check and overflow there.
MAX_REWARD = 1e9
# Re-running a failed chunk sample by sample stops after this many samples time out: one hung
# sample among healthy ones still lets the others score, a reward that hangs on everything gives up.
RECOVERY_TIMEOUTS = 2
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


def _call_in_thread(fn, args: dict[str, Any]) -> Any:
    """Run to completion in a thread: gives an async reward a loop of its own when the caller already runs one."""
    box: dict[str, Any] = {}

    def target():
        try:
            box["out"] = run_sync(fn, args)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            box["exc"] = exc

    thread = threading.Thread(target=target, daemon=True, name="audiorl-reward")
    thread.start()
    thread.join()
    if "exc" in box:
        raise box["exc"]
    return box["out"]


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
            self._pool.close()
            self._pool = None

    @property
    def in_processes(self) -> bool:
        """Whether calls run in worker processes: ``workers > 0``, or a timeout (which must be able to kill the work)."""
        return bool(self.workers) or self.timeout_s is not None

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
        if self.in_processes:
            outcomes = self._pool_run([args.rows(rows) for rows in chunks])
        else:
            outcomes = (self._call_here(args.rows(rows)) for rows in chunks)  # one chunk at a time
        values: list[float] = []
        failed = 0
        failures: list[tuple[slice, Exception]] = []
        for rows, (kind, out) in zip(chunks, outcomes):
            if kind == OK:
                try:
                    values += self._check(out, rows, completions)
                    continue
                except RewardError:
                    raise
                except Exception as exc:  # noqa: BLE001 - _check raises RewardError; anything else is the reward's
                    out, kind = exc, FAILED
            error = RewardTimeout(out) if kind == TIMED_OUT else out
            failures.append((rows, error))
            values += [math.nan] * (rows.stop - rows.start)  # filled in by _recover
        if failures:
            failed = self._recover(args, failures, completions, values)
        return values, failed

    def _pool_run(self, tasks: list[dict[str, Any]], max_timeouts: int | None = None) -> list[tuple[str, Any]]:
        if self._pool is None:
            self._pool = WorkerPool(self.name, self.spec_name, dict(self.kwargs), max(self.workers, 1))
        return self._pool.run(tasks, self.timeout_s, max_timeouts)

    def _call_here(self, args: dict[str, Any]) -> tuple[str, Any]:
        """In this process (no timeout: nothing here could stop the work): (OK, value) or (FAILED, exception)."""
        try:
            fn = self.callable
        except RewardError:
            raise
        try:
            if _in_running_loop():  # an async reward needs a loop of its own
                return OK, _call_in_thread(fn, args)
            return OK, run_sync(fn, args)
        except Exception as exc:  # noqa: BLE001 - a reward may raise anything; we name it and the samples
            return FAILED, exc

    def _recover(self, args, failures: list[tuple[slice, Exception]], completions, values: list[float]) -> int:
        """After chunks failed: name the failing sample (raise) or score the others (zero/skip). Returns the failures.

        Samples are re-run one by one; after RECOVERY_TIMEOUTS of them time out the rest are not run
        (they count as failing): a reward that hangs on every sample costs at most three timeouts
        per call (the batch, then two samples), not one per sample.
        """
        for rows, exc in failures:
            if isinstance(exc, RewardTimeout) and self.on_error == "raise":
                raise RewardError(
                    f"reward '{self.name}' timed out ({exc}) on samples {rows.start}-{rows.stop - 1} "
                    f"(first completion {_snippet(completions[rows.start])!r}); raise its timeout_s or set on_error"
                ) from None
        indices = [i for rows, _ in failures for i in range(rows.start, rows.stop)]
        tasks = [args.rows(slice(i, i + 1)) for i in indices]
        if self.in_processes:
            outcomes = self._pool_run(tasks, max_timeouts=RECOVERY_TIMEOUTS)
        else:
            outcomes = (self._call_here(task) for task in tasks)
        problems: list[str] = []
        for i, (kind, out) in zip(indices, outcomes):
            if kind == OK:
                try:
                    values[i] = self._check(out, slice(i, i + 1), completions)[0]
                    continue
                except RewardError:
                    raise
                except Exception as exc:  # noqa: BLE001
                    kind, out = FAILED, exc
            if kind == TIMED_OUT:
                where = f"timed out ({out}) on sample {i} (completion {_snippet(completions[i])!r})"
            else:
                where = f"raised {type(out).__name__}: {out} on sample {i} (completion {_snippet(completions[i])!r})"
            if self.on_error == "raise":
                raise RewardError(f"reward '{self.name}' {where}") from (out if isinstance(out, BaseException) else None)
            problems.append(where)
            values[i] = 0.0 if self.on_error == "zero" else math.nan
        if not problems and self.on_error == "raise":
            rows, exc = failures[0]
            raise RewardError(
                f"reward '{self.name}' raised {type(exc).__name__}: {exc} on samples {rows.start}-{rows.stop - 1}"
            ) from exc
        if problems:
            log.warning(
                "reward '%s' failed on %d sample(s), scored %s (on_error=%s); first: %s",
                self.name, len(problems), "0" if self.on_error == "zero" else "as not applicable", self.on_error, problems[0],
            )
        return len(problems)

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
