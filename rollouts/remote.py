"""The ``vllm`` backend with ``rollout.vllm.mode: server``: generation on ``audiorl rollout-server``
processes (other GPUs, other nodes), weights pushed after every optimizer step.

Several servers give data-parallel rollouts: each call's prompts are split into contiguous shards,
one per server, with seeds that depend on a prompt's global index, so the completions do not
depend on the number of servers. Every request has a timeout and bounded retries; a dead or
stalled server ends the run with an error naming it, never a hang.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import urlparse

from audiorl.common.errors import RolloutServerError
from audiorl.rollouts import wire
from audiorl.rollouts.base import Completion, RolloutEngine, RolloutRequest, SamplingParams
from audiorl.rollouts.sync import WeightSync
from audiorl.rollouts.weight_transport import GroupSender
from torch import nn

log = logging.getLogger("audiorl")

WAIT_REPORT_S = 5.0  # while waiting for a server to come up, say so this often


class ServerClient:
    """One server: JSON/bytes over HTTP with timeouts and retries."""

    def __init__(self, url: str, timeout_s: float, retries: int, retry_wait_s: float = 1.0):
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self.retries = retries
        self.retry_wait_s = retry_wait_s
        self.known_clips: set[str] = set()

    def call(
        self, path: str, body: bytes | None = None, timeout_s: float | None = None, retries: int | None = None
    ) -> tuple[int, dict]:
        timeout = timeout_s or self.timeout_s
        retries = self.retries if retries is None else retries
        last: Exception | None = None
        for attempt in range(retries + 1):
            if attempt:
                time.sleep(self.retry_wait_s * attempt)
            request = urllib.request.Request(self.url + path, data=body, method="GET" if body is None else "POST")
            try:
                with urllib.request.urlopen(request, timeout=timeout) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as exc:  # the server answered: report its error, do not retry
                payload = _json_or_text(exc.read())
                if exc.code == 409:
                    return 409, payload
                raise RolloutServerError(
                    f"rollout server {self.url} failed {path} (HTTP {exc.code}): {payload.get('error', payload)}"
                ) from None
            except (urllib.error.URLError, OSError, TimeoutError) as exc:
                last = exc
        reason = getattr(last, "reason", last)
        raise RolloutServerError(
            f"rollout server {self.url} did not answer {path} within {timeout:g} s "
            f"({retries + 1} attempts): {reason}"
        )

    def wait_ready(self, timeout_s: float) -> dict:
        start = time.monotonic()
        deadline = start + timeout_s
        probe = ServerClient(self.url, timeout_s=min(10.0, timeout_s), retries=0)
        said = start
        while True:
            try:
                return probe.call("/health")[1]
            except RolloutServerError as exc:
                now = time.monotonic()
                if now > deadline:
                    raise RolloutServerError(
                        f"rollout server {self.url} not ready after {timeout_s:g} s: {exc}"
                    ) from None
                if now - said >= WAIT_REPORT_S:  # a long wait says what it waits for, not silence
                    said = now
                    log.info(
                        "waiting for the rollout server at %s (GET /health; start it with `audiorl rollout-server`): "
                        "%.0f of %g s (rollout.vllm.startup_timeout_s); last: %s",
                        self.url, now - start, timeout_s, getattr(exc, "args", [exc])[0],
                    )
                time.sleep(1.0)


def _address_towards(url: str) -> str:
    """This machine's address on the route to ``url`` (what a server there can connect back to)."""
    import socket

    parsed = urlparse(url)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect((parsed.hostname or "127.0.0.1", parsed.port or 80))  # UDP: picks the route, sends nothing
        return s.getsockname()[0]


def _json_or_text(raw: bytes) -> dict:
    try:
        return json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace")[:500]}


def shard(counts: Sequence[int], parts: int) -> list[tuple[int, int]]:
    """Contiguous [start, end) ranges over items of the given sizes, balanced by total size."""
    total, bounds, start, acc = sum(counts), [], 0, 0
    for part in range(parts):
        target = total * (part + 1) / parts
        end = start
        while end < len(counts) and (acc + counts[end] <= target or end == start):
            acc += counts[end]
            end += 1
        if part == parts - 1:
            end = len(counts)
        bounds.append((start, end))
        start = end
    return [b for b in bounds if b[0] < b[1]]


class RemoteRolloutEngine(RolloutEngine):
    samples_from_trainer_model = False

    def __init__(self, lm: Any, embedder: Any, config: Any, seed: int = 0):
        super().__init__(lm, embedder, config, seed)
        v = config.vllm
        if not v.servers:
            raise RolloutServerError("rollout.vllm.mode is 'server' but rollout.vllm.servers is empty")
        self.servers = [ServerClient(url, v.request_timeout_s, v.retries) for url in v.servers]
        self.sync = WeightSync(lm)
        self.transport = v.weight_transport
        if self.transport == "auto":
            self.transport = "nccl" if next(lm.model.parameters()).is_cuda else "http"
        self._group: Any = None
        self.calls = 0
        self._pool = ThreadPoolExecutor(max_workers=len(self.servers))
        for server, info in zip(self.servers, self._pool.map(lambda s: s.wait_ready(v.startup_timeout_s), self.servers)):
            self._check_compatible(server, info)

    def _check_compatible(self, server: ServerClient, info: dict) -> None:
        expected = {"vocab_size": len(self.lm.tokenizer), "placeholder_id": self.lm.audio_placeholder_id}
        for key, value in expected.items():
            if info.get(key) != value:
                raise RolloutServerError(
                    f"rollout server {server.url} serves {info.get('model')} with {key}={info.get(key)}; "
                    f"the policy has {key}={value}: start it with a checkpoint of the same model"
                )

    def generate(self, requests: Sequence[RolloutRequest], params: SamplingParams) -> list[list[Completion]]:
        call, self.calls = self.calls, self.calls + 1
        ranges = shard([r.n for r in requests], len(self.servers))
        jobs = [
            self._pool.submit(self._generate_on, server, requests[a:b], params, call, a)
            for server, (a, b) in zip(self.servers, ranges)
        ]
        results: list[list[Completion]] = []
        for job in jobs:
            results.extend(job.result())
        return results

    def _generate_on(
        self, server: ServerClient, requests: Sequence[RolloutRequest], params: SamplingParams, call: int, first: int
    ) -> list[list[Completion]]:
        body: dict[str, Any] = {
            "prompts": [{"prompt_ids": r.prompt_ids, "clips": [c.key for c in r.clips], "n": r.n} for r in requests],
            "params": wire.encode_params(params),
            "call": call,
            "first_prompt": first,
            "seed": self.seed,  # the recipe's seed, not the server's: `seed=` changes what every server samples
        }
        clips = {c.key: c for r in requests for c in r.clips}
        send = [k for k in clips if k not in server.known_clips]
        for _ in range(2):
            body["clips"] = {k: wire.encode_wave(self.embedder.store.wave(clips[k])) for k in send}
            status, payload = server.call("/generate", json.dumps(body).encode())
            if status != 409:
                server.known_clips.update(clips)
                return [[wire.decode_completion(c) for c in group] for group in payload["completions"]]
            send = payload["missing"]  # the server dropped them (restart, cache limit): send again
            server.known_clips.difference_update(send)
        raise RolloutServerError(f"rollout server {server.url} keeps losing clips {send[:3]}...: raise --clip-cache-mb")

    def update_weights(self, model: nn.Module) -> None:
        state = self.sync.changed(model)
        if self.transport == "http":
            blob = wire.encode_weights(state)
            list(self._pool.map(lambda s: s.call("/weights", blob), self.servers))
        else:
            self._broadcast(state)

    def _broadcast(self, state: dict[str, Any]) -> None:
        if self._group is None:
            v = self.config.vllm
            self._group = GroupSender(
                self.servers, self.transport, v.weight_transport_host or _address_towards(self.servers[0].url),
                v.weight_transport_port, v.request_timeout_s, v.weight_bucket_mb << 20, self._pool,
            )
        self._group.send(state)

    def close(self) -> None:
        self._pool.shutdown(wait=False)
