"""Benchmark how weights reach rollout servers: safetensors over HTTP vs a gloo broadcast.

    python bench/weight_transport.py                    # 64, 256 and 1024 MB of float32, 2 servers
    python bench/weight_transport.py --mb 512 --servers 1

Transport only: each server is a real `RolloutServer` (the HTTP endpoints the trainer talks to)
whose vLLM worker is replaced by one that just counts the tensors it is given, so the figures are
the cost of moving the weights, not of vLLM loading them (bench/rollout.py times that). Servers run
in their own processes on this machine; on GPU the same code path uses NCCL.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class CountingWorker:
    asleep = False

    def load_weights(self, weights) -> int:
        return sum(1 for _ in weights)


def serve() -> None:
    from http.server import ThreadingHTTPServer

    from audiorl.rollouts.server import RolloutServer, make_handler

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(RolloutServer(CountingWorker(), {"model": "bench"})))
    print(f"PORT {httpd.server_address[1]}", flush=True)
    httpd.serve_forever()


def state_of(mb: int) -> dict:
    import torch

    n_tensors = 32
    per = mb * 2**20 // 4 // n_tensors
    return {f"layer.{i}.weight": torch.randn(per) for i in range(n_tensors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", default="64,256,1024")
    parser.add_argument("--servers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # internal: one server
    args = parser.parse_args()
    sys.path.insert(0, REPO)
    if args.serve:
        serve()
        return

    from audiorl.rollouts import wire
    from audiorl.rollouts.remote import ServerClient
    from audiorl.rollouts.weight_transport import GroupSender

    procs = [subprocess.Popen([sys.executable, __file__, "--serve"], stdout=subprocess.PIPE, text=True)
             for _ in range(args.servers)]
    try:
        urls = [f"http://127.0.0.1:{p.stdout.readline().split()[1]}" for p in procs]
        clients = [ServerClient(url, timeout_s=600, retries=0) for url in urls]
        pool = ThreadPoolExecutor(max_workers=len(clients))
        group = GroupSender(clients, "gloo", "127.0.0.1", 0, 600, 512 << 20, pool)
        print(f"{args.servers} server(s) on this machine, float32 weights in 32 tensors, best of {args.repeats}\n")
        print("| MB | http s | http MB/s | gloo s | gloo MB/s |")
        print("|---|---|---|---|---|")
        for mb in (int(x) for x in args.mb.split(",")):
            state = state_of(mb)

            def http():
                blob = wire.encode_weights(state)
                list(pool.map(lambda c: c.call("/weights", blob), clients))

            times = {}
            for name, send in (("http", http), ("gloo", lambda: group.send(state))):
                send()  # warm-up
                runs = []
                for _ in range(args.repeats):
                    t = time.perf_counter()
                    send()
                    runs.append(time.perf_counter() - t)
                times[name] = min(runs)
            print(f"| {mb} | {times['http']:.2f} | {mb / times['http']:,.0f} | {times['gloo']:.2f} | {mb / times['gloo']:,.0f} |",
                  flush=True)
    finally:
        for p in procs:
            p.kill()


if __name__ == "__main__":
    main()
