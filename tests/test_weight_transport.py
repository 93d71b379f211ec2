"""Process-group weight transport: bucketing, and a real gloo broadcast between ranks."""

from __future__ import annotations

import threading

import pytest
import torch
from audiorl.rollouts.weight_transport import ServerSide, TensorMeta, broadcast, buckets, make_group


def metas_of(state):
    return [TensorMeta(n, str(t.dtype).removeprefix("torch."), tuple(t.shape)) for n, t in state.items()]


def test_buckets_group_by_dtype_and_respect_the_size():
    metas = [TensorMeta("a", "float32", (10,)), TensorMeta("b", "bfloat16", (10,)), TensorMeta("c", "float32", (20,)),
             TensorMeta("d", "float32", (100,))]
    assert buckets(metas, bucket_bytes=120) == [[0, 2], [3], [1]]  # 40 + 80 bytes fit; d (400 bytes) goes alone
    assert sorted(i for b in buckets(metas, 1) for i in b) == [0, 1, 2, 3]
    assert TensorMeta.from_json(metas[0].to_json()) == metas[0]


def test_gloo_broadcast_delivers_every_tensor_to_every_rank():
    torch.manual_seed(0)
    state = {
        "w1": torch.randn(4, 8),
        "w2": torch.randn(3).to(torch.bfloat16),
        "w3": torch.randn(2, 2, 2),
        "scalar": torch.tensor(1.5),
    }
    metas = metas_of(state)
    store = torch.distributed.TCPStore("127.0.0.1", 0, 3, True, wait_for_workers=False)
    servers = [ServerSide("gloo", "127.0.0.1", store.port, rank, 3, 30, bucket_bytes=64, device=torch.device("cpu"))
               for rank in (1, 2)]
    group = make_group("gloo", "127.0.0.1", store.port, 0, 3, 30, store=store)
    received = {}

    def receive(rank, side):
        received[rank] = dict(side.receive(metas))

    threads = [threading.Thread(target=receive, args=(rank, side)) for rank, side in zip((1, 2), servers)]
    for t in threads:
        t.start()
    broadcast(group, metas, 64, torch.device("cpu"), list(state.values()))
    for t in threads:
        t.join(30)
    for rank in (1, 2):
        assert set(received[rank]) == set(state)
        for name, tensor in state.items():
            assert received[rank][name].dtype == tensor.dtype and torch.equal(received[rank][name], tensor)


def test_a_server_that_cannot_join_says_why():
    side = ServerSide("gloo", "127.0.0.1", 1, 1, 2, 1.0, bucket_bytes=64, device=torch.device("cpu"))  # nobody on port 1
    with pytest.raises(RuntimeError, match="joining the trainer's weight group failed"):
        side.receive([TensorMeta("w", "float32", (1,))])
    assert not side._thread.is_alive()  # the join gave up and its thread ended
