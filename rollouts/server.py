"""``audiorl rollout-server``: vLLM workers in their own process, driven over HTTP by the trainer.

Endpoints (JSON unless said):
  GET  /health       model, vocabulary, weights version; answers while a generation runs
  POST /generate     {"prompts": [{"prompt_ids", "clips": [key...], "n"}], "clips": {key: wave},
                      "params": {...}, "call": int, "first_prompt": int, "seed": int} -> {"completions": [[...]]}
                     409 {"missing": [key...]} when a clip is neither sent nor held
  POST /weights      body: safetensors of hub-named tensors -> {"tensors": n, "version": v}
  POST /group/join   {"backend", "host", "port", "rank", "world_size", "timeout_s", "bucket_bytes"}: join the
                     trainer's weight group (answers at once; the group forms when all ranks joined)
  POST /group/receive {"tensors": [[name, dtype, shape]...]}: receive them by broadcast, load them
                     -> {"tensors": n, "version": v}
  POST /sleep, /wake_up
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import torch
from audiorl.data.audio import WaveCache
from audiorl.rollouts import wire
from audiorl.rollouts.vllm_worker import VLLMWorker, WorkerPrompt, placeholder_options, vllm_environment


class RolloutServer:
    def __init__(self, worker: VLLMWorker, info: dict[str, Any], clip_cache_mb: int = 1024):
        self.worker = worker
        self.info = info
        self.clips = WaveCache(clip_cache_mb * 2**20)
        self.version = 0
        self.lock = threading.Lock()  # one vLLM call at a time
        self.group: Any = None  # the trainer's weight group, once joined

    def health(self) -> dict[str, Any]:
        return {"status": "ok", "weights_version": self.version, **self.info}

    def generate(self, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
        with self.lock:
            for key, text in body.get("clips", {}).items():
                self.clips.put(key, wire.decode_wave(text))
            missing = sorted({k for p in body["prompts"] for k in p["clips"] if self.clips.get(k) is None})
            if missing:
                return 409, {"missing": missing}
            prompts = [
                WorkerPrompt(p["prompt_ids"], [self.clips.get(k) for k in p["clips"]], int(p["n"]))
                for p in body["prompts"]
            ]
            results = self.worker.generate(
                prompts,
                wire.decode_params(body["params"]),
                call=body.get("call"),
                first_prompt=body.get("first_prompt", 0),
                seed=body.get("seed"),
            )
        return 200, {"completions": [[wire.encode_completion(c) for c in group] for group in results]}

    def load_weights(self, blob: bytes) -> dict[str, Any]:
        state = wire.decode_weights(blob)
        with self.lock:
            n = self.worker.load_weights(state.items())
            self.version += 1
        return {"tensors": n, "version": self.version}

    def join_group(self, body: dict[str, Any]) -> dict[str, Any]:
        from audiorl.rollouts.weight_transport import ServerSide

        device = torch.device("cuda", torch.cuda.current_device()) if body["backend"] == "nccl" else torch.device("cpu")
        self.group = ServerSide(
            body["backend"], body["host"], int(body["port"]), int(body["rank"]), int(body["world_size"]),
            float(body["timeout_s"]), int(body["bucket_bytes"]), device,
        )
        return {"joining": True}

    def receive_weights(self, body: dict[str, Any]) -> dict[str, Any]:
        from audiorl.rollouts.weight_transport import TensorMeta

        if self.group is None:
            raise RuntimeError("no weight group: POST /group/join first")
        metas = [TensorMeta.from_json(item) for item in body["tensors"]]
        with self.lock:
            weights = self.group.receive(metas)
            n = self.worker.load_weights(weights)
            self.version += 1
        return {"tensors": n, "version": self.version}

    def sleep(self, wake: bool) -> dict[str, Any]:
        with self.lock:
            self.worker.wake_up() if wake else self.worker.sleep()
        return {"asleep": self.worker.asleep}


def make_handler(server: RolloutServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet: the trainer logs what matters
            pass

        def _reply(self, code: int, payload: dict[str, Any]) -> None:
            data = json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:
            if self.path == "/health":
                self._reply(200, server.health())
            else:
                self._reply(404, {"error": f"no such endpoint: GET {self.path}"})

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                if self.path == "/generate":
                    self._reply(*server.generate(json.loads(body)))
                elif self.path == "/weights":
                    self._reply(200, server.load_weights(body))
                elif self.path == "/group/join":
                    self._reply(200, server.join_group(json.loads(body)))
                elif self.path == "/group/receive":
                    self._reply(200, server.receive_weights(json.loads(body)))
                elif self.path in ("/sleep", "/wake_up"):
                    self._reply(200, server.sleep(wake=self.path == "/wake_up"))
                else:
                    self._reply(404, {"error": f"no such endpoint: POST {self.path}"})
            except Exception as exc:  # the client shows the server's error, not a bare 500
                self._reply(500, {"error": f"{type(exc).__name__}: {exc}"})

    return Handler


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or argparse.ArgumentParser(
        prog="audiorl rollout-server",
        description="Serve rollouts of a checkpoint with vLLM over HTTP, for recipes with rollout.vllm.mode: server "
        "(list the printed URL in rollout.vllm.servers); the trainer sends prompts, audio and new weights.",
    )
    p.add_argument("--model", required=True, help="Hugging Face-format checkpoint directory (hub layout, e.g. a run's merged/)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1; 0.0.0.0 for other nodes)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000; 0: any free port, the chosen URL is printed)")
    p.add_argument("--dtype", default="auto", help="auto (the dtype the checkpoint's config names) | float32 | bfloat16 | float16")
    p.add_argument("--seed", type=int, default=0, help="sampling seed for requests that name none (audiorl trainers send theirs)")
    p.add_argument("--max-model-len", type=int, default=4096, help="longest prompt + completion in tokens (default 4096)")
    p.add_argument("--kv-cache-mb", type=int, default=None, help="KV cache size in MB (default: 256 on CPU, from --gpu-memory-utilization on GPU)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9, help="share of GPU memory vLLM may take (default 0.9)")
    p.add_argument("--max-audio-per-prompt", type=int, default=1, help="audio clips one prompt may carry (default 1)")
    p.add_argument("--clip-cache-mb", type=int, default=1024, help="memory for clips received, kept by content key (default 1024)")
    return p


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype the checkpoint's config names (vLLM's own "auto" would run a float32 model in 16 bits)."""
    with open(os.path.join(model_dir, "config.json")) as f:
        config = json.load(f)
    config = config.get("thinker_config", config)  # Omni: the thinker's config holds the dtype
    text = config.get("text_config", {})  # Step-Audio 2's release names it there only, as torch_dtype
    dtype = config.get("dtype") or config.get("torch_dtype") or text.get("dtype") or text.get("torch_dtype")
    return str(dtype or "float32").removeprefix("torch.")


def serve(args: argparse.Namespace) -> None:
    vllm_environment()
    from audiorl.model import load_audio_lm

    lm = load_audio_lm(args.model, load_model=False)
    if not lm.vllm_loadable:
        from audiorl.common.errors import ConfigError

        raise ConfigError(
            f"--model '{args.model}': vLLM cannot load this layout ({lm.family} saved on its own); "
            "re-save it with audiorl (any trained run's merged/ directory, or AudioLM.save_pretrained)"
        )
    worker = VLLMWorker(
        args.model,
        dtype=checkpoint_dtype(args.model) if args.dtype == "auto" else args.dtype,
        seed=args.seed,
        max_model_len=args.max_model_len,
        kv_cache_mb=args.kv_cache_mb,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_audio_per_prompt=args.max_audio_per_prompt,
        disabled_modalities=lm.vllm_disabled_modalities,
        stop_token_ids=lm.eos_token_ids,
        suppress_token_ids=lm.special_input_token_ids,
        **placeholder_options(lm),
    )
    info = {
        "model": args.model,
        "family": lm.family,
        "dtype": str(worker.llm.llm_engine.model_config.dtype).removeprefix("torch."),
        "vocab_size": len(lm.tokenizer),
        "placeholder_id": lm.audio_placeholder_id,
        "started": time.time(),
    }
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(RolloutServer(worker, info, args.clip_cache_mb)))
    host, port = httpd.server_address[:2]
    print(f"audiorl rollout-server ready on http://{host}:{port}", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()


def main(argv: list[str] | None = None) -> None:
    serve(build_parser().parse_args(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
