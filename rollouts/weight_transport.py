"""Weights from the trainer to rollout servers over a process group (NCCL on GPU, gloo on CPU).

HTTP carries what is small: the trainer asks every server to join a group (``POST /group/join``),
then for each update posts the list of tensors it is about to send (``POST /group/receive``); the
tensors themselves go by ``broadcast`` from the trainer (rank 0), packed into one flat buffer per
dtype and bucket. A server answers the receive request once the weights are loaded and its caches
reset, so the trainer knows every server holds the new weights before it generates.

The group is built directly on a ``TCPStore`` the trainer hosts, not through
``init_process_group``: the trainer's own default group (accelerate, DeepSpeed) and the one vLLM
may create in a server stay untouched.
"""

from __future__ import annotations

import datetime
import json
import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

BACKENDS = ("gloo", "nccl")
_PREFIX = "audiorl-weights"


@dataclass(frozen=True)
class TensorMeta:
    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    def to_json(self) -> list:
        return [self.name, self.dtype, list(self.shape)]

    @classmethod
    def from_json(cls, item: Sequence) -> TensorMeta:
        name, dtype, shape = item
        return cls(str(name), str(dtype), tuple(int(d) for d in shape))


def buckets(metas: Sequence[TensorMeta], bucket_bytes: int) -> list[list[int]]:
    """Indices of ``metas`` grouped into same-dtype buckets of at most ``bucket_bytes`` (one tensor may exceed it).

    Both ends compute the same buckets from the same list, so only the list crosses HTTP.
    """
    out: list[list[int]] = []
    by_dtype: dict[str, list[int]] = {}
    for i, m in enumerate(metas):
        by_dtype.setdefault(m.dtype, []).append(i)
    for dtype, indices in by_dtype.items():
        size = _dtype(dtype).itemsize
        current: list[int] = []
        used = 0
        for i in indices:
            nbytes = metas[i].numel * size
            if current and used + nbytes > bucket_bytes:
                out.append(current)
                current, used = [], 0
            current.append(i)
            used += nbytes
        if current:
            out.append(current)
    return out


def _dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, name.removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype '{name}'")
    return dtype


def make_group(backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float, store: Any = None):
    """A process group of its own on the trainer's TCPStore (rank 0 hosts the store)."""
    if backend not in BACKENDS:
        raise ValueError(f"weight transport backend must be one of {', '.join(BACKENDS)}, got '{backend}'")
    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store = dist.TCPStore(host, port, world_size, rank == 0, timeout, wait_for_workers=False)
    prefixed = dist.PrefixStore(_PREFIX, store)
    if backend == "gloo":
        return dist.ProcessGroupGloo(prefixed, rank, world_size, timeout)
    options = dist.ProcessGroupNCCL.Options()
    options._timeout = timeout
    return dist.ProcessGroupNCCL(prefixed, rank, world_size, options)


def broadcast(group: Any, metas: Sequence[TensorMeta], bucket_bytes: int, device: torch.device,
              tensors: Sequence[torch.Tensor] | None = None) -> list[torch.Tensor]:
    """Send (``tensors`` given: rank 0) or receive the tensors described by ``metas``, bucket by bucket."""
    received: list[torch.Tensor | None] = [None] * len(metas)
    for bucket in buckets(metas, bucket_bytes):
        dtype = _dtype(metas[bucket[0]].dtype)
        if tensors is not None:
            flat = torch.cat([tensors[i].detach().to(device=device, dtype=dtype).reshape(-1) for i in bucket])
        else:
            flat = torch.empty(sum(metas[i].numel for i in bucket), dtype=dtype, device=device)
        group.broadcast([flat], _root()).wait()
        offset = 0
        for i in bucket:
            n = metas[i].numel
            received[i] = flat[offset : offset + n].view(metas[i].shape)
            offset += n
    return received  # type: ignore[return-value]


def _root() -> dist.BroadcastOptions:
    opts = dist.BroadcastOptions()
    opts.rootRank = 0
    opts.rootTensor = 0
    return opts


class GroupSender:
    """The trainer's end: hosts the store, asks the servers (``ServerClient``s) to join, then broadcasts."""

    def __init__(self, servers: Sequence[Any], backend: str, host: str, port: int, timeout_s: float,
                 bucket_bytes: int, pool: Any):
        from audiorl.common.errors import RolloutServerError

        self.servers, self.backend, self.bucket_bytes, self.pool = list(servers), backend, bucket_bytes, pool
        world = len(self.servers) + 1
        store = dist.TCPStore(host, port, world, True, datetime.timedelta(seconds=timeout_s), wait_for_workers=False)
        for rank, server in enumerate(self.servers, start=1):
            request = {"backend": backend, "host": host, "port": store.port, "rank": rank, "world_size": world,
                       "timeout_s": timeout_s, "bucket_bytes": bucket_bytes}
            server.call("/group/join", json.dumps(request).encode(), retries=0)
        try:
            self.group = make_group(backend, host, store.port, 0, world, timeout_s, store=store)
        except Exception as exc:
            raise RolloutServerError(
                f"rollout servers {self._urls()} did not join the {backend} weight group at {host}:{store.port} "
                f"within {timeout_s:g} s: {exc}"
            ) from None

    def _urls(self) -> str:
        return ", ".join(s.url for s in self.servers)

    def send(self, state: dict[str, torch.Tensor]) -> None:
        """Every server holds ``state`` (loaded, caches reset) when this returns."""
        from audiorl.common.errors import RolloutServerError

        metas = [TensorMeta(name, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for name, t in state.items()]
        body = json.dumps({"tensors": [m.to_json() for m in metas]}).encode()
        # No retries: a repeated receive request would wait for a broadcast that already happened.
        answers = [self.pool.submit(s.call, "/group/receive", body, None, 0) for s in self.servers]
        device = next(iter(state.values())).device if self.backend == "nccl" else torch.device("cpu")
        try:
            broadcast(self.group, metas, self.bucket_bytes, device, list(state.values()))
        except Exception as exc:
            failures = [str(a.exception()) for a in answers if a.done() and a.exception() is not None]
            raise RolloutServerError(
                f"weight broadcast to rollout servers {self._urls()} failed: {exc}"
                + (f"; servers said: {'; '.join(failures)}" if failures else "")
            ) from None
        for answer in answers:
            answer.result()  # raises RolloutServerError naming the server


class ServerSide:
    """A rollout server's end: joins in the background (the trainer joins at the same time), then receives."""

    def __init__(self, backend: str, host: str, port: int, rank: int, world_size: int, timeout_s: float,
                 bucket_bytes: int, device: torch.device):
        self.bucket_bytes = bucket_bytes
        self.device = device
        self.timeout_s = timeout_s
        self.group: Any = None
        self.error: BaseException | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(
            target=self._join, args=(backend, host, port, rank, world_size, timeout_s), daemon=True, name="audiorl-join"
        )
        self._thread.start()

    def _join(self, *args: Any) -> None:
        try:
            self.group = make_group(*args)
        except BaseException as exc:  # noqa: BLE001 - reported on the next receive
            self.error = exc
        finally:
            self._ready.set()

    def receive(self, metas: Sequence[TensorMeta]) -> list[tuple[str, torch.Tensor]]:
        # The join gives up after timeout_s itself; waiting a little longer lets its thread end first (a
        # thread still inside the C++ store at interpreter exit aborts the process).
        if not self._ready.wait(self.timeout_s + 10) or self.group is None:
            raise RuntimeError(f"joining the trainer's weight group failed: {self.error or 'timed out'}")
        tensors = broadcast(self.group, metas, self.bucket_bytes, self.device)
        return [(m.name, t) for m, t in zip(metas, tensors)]
