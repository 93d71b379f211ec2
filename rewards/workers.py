"""Reward worker processes that a timeout can kill: the only way to stop a hung reward's work.

``WorkerPool.run(tasks, timeout_s)`` runs each task (a reward call's arguments) in one of ``size``
spawned processes. A task's clock starts when it is sent to a worker that is up (starting a
process, importing the reward and constructing a class reward do not count against it); a task
that overruns gets its worker killed (SIGKILL: threads cannot be stopped, processes can) and a
fresh worker started for the rest. ``max_timeouts`` bounds a whole ``run``: after that many
timeouts the tasks not yet started are given up, so a reward that hangs on every sample costs a
few timeouts, not one per sample.
"""

from __future__ import annotations

import inspect
import logging
import multiprocessing
import pickle
import sys
import time
from collections import deque
from multiprocessing.connection import wait
from typing import Any

from audiorl.common.errors import RewardError

log = logging.getLogger(__name__)

STARTUP_TIMEOUT_S = 600.0  # a worker that has not imported and built its reward by then is broken
OK, FAILED, TIMED_OUT = "ok", "failed", "timed_out"


def _worker_main(conn, name: str, kwargs: dict[str, Any], path: list[str]) -> None:
    from audiorl.rewards.calling import run_sync
    from audiorl.rewards.registry import resolve_reward

    sys.path[:] = path  # the parent's import path: module:function plug-ins resolve the same way
    try:
        fn = resolve_reward(name)
        fn = fn(**kwargs) if inspect.isclass(fn) else fn
    except BaseException as exc:  # noqa: BLE001 - reported to the parent, which names the reward
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", None))
    while True:
        try:
            args = conn.recv()
        except EOFError:
            return
        if args is None:
            return
        try:
            message = (OK, run_sync(fn, args))
        except BaseException as exc:  # noqa: BLE001 - re-raised in the parent
            message = (FAILED, exc)
        try:
            conn.send(message)
        except Exception as exc:  # noqa: BLE001 - an unpicklable value or exception
            conn.send((FAILED, RuntimeError(f"the reward's {'result' if message[0] == OK else 'error'} cannot be sent back: {exc}")))


class _Worker:
    def __init__(self, context, name: str, kwargs: dict[str, Any]):
        self.conn, child = context.Pipe()
        self.process = context.Process(
            target=_worker_main, args=(child, name, kwargs, list(sys.path)), daemon=True, name=f"audiorl-reward-{name}"
        )
        self.process.start()
        child.close()
        self.started = time.monotonic()
        self.ready = False
        self.task: int | None = None
        self.deadline: float | None = None

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join(5)
        self.conn.close()


class WorkerPool:
    def __init__(self, reward: str, spec_name: str, kwargs: dict[str, Any], size: int):
        self.reward, self.spec_name, self.kwargs, self.size = reward, spec_name, dict(kwargs), size
        self._context = multiprocessing.get_context("spawn")  # fork is unsafe with torch's threads
        self._workers: list[_Worker] = []
        self.restarts = 0  # workers killed for overrunning (tests and logs read it)

    def _fill(self) -> None:
        while len(self._workers) < self.size:
            self._workers.append(_Worker(self._context, self.spec_name, self.kwargs))

    def _replace(self, worker: _Worker) -> None:
        worker.kill()
        self._workers.remove(worker)
        self._fill()

    def run(self, tasks: list[dict[str, Any]], timeout_s: float | None, max_timeouts: int | None = None) -> list[tuple[str, Any]]:
        """``(OK, value)``, ``(FAILED, exception)`` or ``(TIMED_OUT, reason)`` per task, in order.

        After ``max_timeouts`` tasks have timed out, the tasks not yet started are not run (TIMED_OUT).
        """
        if not tasks:
            return []
        self._fill()
        results: list[tuple[str, Any] | None] = [None] * len(tasks)
        pending = deque(range(len(tasks)))
        timeouts = 0
        while pending or any(w.task is not None for w in self._workers):
            if max_timeouts is not None and timeouts >= max_timeouts:
                while pending:
                    results[pending.popleft()] = (TIMED_OUT, f"not run: {timeouts} samples of this call had timed out")
            now = time.monotonic()
            for worker in self._workers:  # dispatch to idle workers that are up; the task's clock starts now
                if worker.ready and worker.task is None and pending:
                    index = pending.popleft()
                    worker.conn.send(tasks[index])
                    worker.task, worker.deadline = index, (now + timeout_s if timeout_s is not None else None)
            busy = [w for w in self._workers if w.task is not None]
            if not busy and not pending:
                break
            starting = [w for w in self._workers if not w.ready]
            deadlines = [w.deadline for w in busy if w.deadline is not None] + [w.started + STARTUP_TIMEOUT_S for w in starting]
            wait_s = max(0.0, min(deadlines) - now) if deadlines else None
            for conn in wait([w.conn for w in busy + starting], timeout=wait_s):
                worker = next((w for w in self._workers if w.conn is conn), None)
                if worker is not None:
                    self._receive(worker, results)
            now = time.monotonic()
            for worker in list(self._workers):
                if worker.task is not None and worker.deadline is not None and now >= worker.deadline:
                    results[worker.task] = (TIMED_OUT, f"no answer within {timeout_s:g} s")
                    worker.task = None
                    timeouts += 1
                    self.restarts += 1
                    self._replace(worker)  # the only way to stop its work
                elif not worker.ready and now >= worker.started + STARTUP_TIMEOUT_S:
                    self.close()
                    raise RewardError(f"reward '{self.reward}': a worker process did not start within {STARTUP_TIMEOUT_S:g} s")
        return results  # type: ignore[return-value]

    def _receive(self, worker: _Worker, results: list) -> None:
        try:
            kind, value = worker.conn.recv()
        except (EOFError, OSError, pickle.UnpicklingError) as exc:  # the process died (killed, out of memory, crashed)
            code = worker.process.exitcode
            if worker.task is None and not worker.ready:
                self.close()
                raise RewardError(f"reward '{self.reward}': its worker process died while starting (exit code {code})") from exc
            if worker.task is not None:
                results[worker.task] = (FAILED, RuntimeError(f"the worker process died (exit code {code})"))
                worker.task = None
            self._replace(worker)
            return
        if kind == "error":
            self.close()
            raise RewardError(f"reward '{self.reward}' could not be set up in its worker process: {value}")
        if kind == "ready":
            worker.ready = True
            return
        results[worker.task] = (kind, value)
        worker.task, worker.deadline = None, None

    def close(self) -> None:
        for worker in self._workers:
            try:
                if worker.ready and worker.task is None:
                    worker.conn.send(None)
            except OSError:
                pass
            worker.kill()
        self._workers = []
