"""Benchmark the rollout backends: generation tokens/s and seconds per GRPO step, hf vs vllm.

    python bench/rollout.py                              # tiny model, 8 prompts x 8, 64 new tokens
    python bench/rollout.py --backends vllm --model DIR  # any Qwen2-Audio checkpoint directory

Part 1 (`generation`) times `engine.generate` on the same prompts with audio, group size and
length for each backend, after one warm-up call (vLLM start-up is reported on its own).
Part 2 (`grpo step`) runs the real CLI (quickstart recipe, SFT and evaluation off) for a few GRPO
steps per backend and reports the median of TRL's `step_time` after the first step: generation,
weight sync, reference/policy forwards and the optimizer step together.
Prints markdown tables (the rows of BENCHMARKS.md) and, with --json, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "quickstart.yaml")
AUDIORL = os.path.join(os.path.dirname(sys.executable), "audiorl")


def generation_worker(backend: str, model_dir: str, data_dir: str, args: argparse.Namespace) -> None:
    """The timed part of `generation_bench`, in this script's own child process (``--worker BACKEND``)."""
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    sys.path.insert(0, REPO)
    from audiorl.data.audio import AudioStore
    from audiorl.model import load_audio_lm
    from audiorl.model.audio_embed import AudioEmbedder
    from audiorl.rl.config import RolloutConfig
    from audiorl.rl.prompts import PromptEncoder
    from audiorl.rollouts import SamplingParams, build_rollout_engine

    lm = load_audio_lm(model_dir)
    store = AudioStore()
    embedder, encoder = AudioEmbedder(lm, store), PromptEncoder(lm, store)
    with open(os.path.join(data_dir, "train.jsonl")) as f:
        rows = [json.loads(line) for line in f]

    def requests(offset: int):
        return [
            encoder.request(
                [{"role": "user", "content": [{"type": "audio", "audio": os.path.join(data_dir, r["audio"])},
                                              {"type": "text", "text": r["prompt"]}]}],
                n=args.group,
            )
            for r in rows[offset : offset + args.prompts]
        ]

    t = time.perf_counter()
    engine = build_rollout_engine(backend, lm, embedder, RolloutConfig(batch_size=args.prompts * args.group), seed=0)
    engine.update_weights(lm.model)
    start_s = time.perf_counter() - t
    params = SamplingParams(max_new_tokens=args.max_new_tokens, temperature=1.0)
    engine.generate(requests(0), params)  # warm-up
    times, tokens = [], []
    for k in range(args.repeats):
        batch = requests((k + 1) * args.prompts)
        t = time.perf_counter()
        out = engine.generate(batch, params)
        times.append(time.perf_counter() - t)
        tokens.append(sum(len(c.token_ids) for g in out for c in g))
    t = time.perf_counter()
    engine.update_weights(lm.model)
    sync_s = time.perf_counter() - t
    engine.close()
    print("RESULT " + json.dumps({"start_s": start_s, "times": times, "tokens": tokens, "sync_s": sync_s}))


def generation_bench(backend: str, model_dir: str, data_dir: str, args: argparse.Namespace) -> dict:
    """Runs in a fresh process per backend (vLLM binds the process's threads on CPU)."""
    command = [
        sys.executable, os.path.abspath(__file__), "--worker", backend, "--model", model_dir, "--data", data_dir,
        "--prompts", str(args.prompts), "--group", str(args.group),
        "--max-new-tokens", str(args.max_new_tokens), "--repeats", str(args.repeats),
    ]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} generation bench failed:\n{proc.stderr[-3000:]}")
    result = json.loads(next(x for x in proc.stdout.splitlines() if x.startswith("RESULT ")).removeprefix("RESULT "))
    result["tokens_per_s"] = sum(result["tokens"]) / sum(result["times"])
    result["s_per_call"] = sorted(result["times"])[len(result["times"]) // 2]
    return result


def grpo_bench(backend: str, model_dir: str, data_dir: str, args: argparse.Namespace, out: str) -> dict:
    overrides = [
        f"output_dir={out}", f"model.path={model_dir}", "model.build_tiny=false",
        f"data.train={data_dir}/train.jsonl", "data.eval=null", "data.synthesize=null",
        "sft.enabled=false", "eval.every_steps=0", f"grpo.max_steps={args.grpo_steps}",
        f"grpo.prompts_per_step={args.prompts}", f"grpo.num_generations={args.group}",
        f"grpo.micro_batch_size={args.prompts * args.group}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"rollout.backend={backend}",
    ]
    t = time.perf_counter()
    proc = subprocess.run([AUDIORL, "train", RECIPE, *overrides], capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{backend} GRPO bench failed:\n{proc.stderr[-3000:]}")
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    steps = [r["step_time"] for r in rows if r["stage"] == "grpo" and "step_time" in r][1:]
    lengths = [r["completions/mean_length"] for r in rows if r["stage"] == "grpo"]
    return {
        "wall_s": time.perf_counter() - t,
        "step_s": sorted(steps)[len(steps) // 2],
        "mean_completion_tokens": sum(lengths) / len(lengths),
        "logprob_diff_max": max((r.get("rollout/logprob_diff/max", 0.0) for r in rows if r["stage"] == "grpo"), default=0.0),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backends", default="hf,vllm")
    parser.add_argument("--model", help="checkpoint directory (default: build the tiny model)")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--grpo-steps", type=int, default=6)
    parser.add_argument("--skip-grpo", action="store_true")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)  # internal: time one backend in this process
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        generation_worker(args.worker, args.model, args.data, args)
        return

    work = tempfile.mkdtemp(prefix="audiorl-bench-")
    model_dir = args.model or os.path.join(work, "tiny")
    if not args.model:
        subprocess.run([AUDIORL, "make-tiny", model_dir], check=True, capture_output=True)
    data_dir = os.path.join(work, "data")
    n_train = args.prompts * (args.repeats + 1 + args.grpo_steps)
    subprocess.run([AUDIORL, "make-data", data_dir, "--n-train", str(n_train), "--n-eval", "8"], check=True, capture_output=True)

    results: dict = {"config": vars(args)}
    print(f"{args.prompts} prompts x {args.group} completions, up to {args.max_new_tokens} new tokens, temperature 1\n")
    print("| backend | start-up s | s per generate call | tokens per call | tokens/s | weight sync s |")
    print("|---|---|---|---|---|---|")
    for backend in args.backends.split(","):
        r = generation_bench(backend, model_dir, data_dir, args)
        results[f"generation/{backend}"] = r
        print(f"| {backend} | {r['start_s']:.1f} | {r['s_per_call']:.2f} | {sum(r['tokens']) / len(r['tokens']):.0f} "
              f"| {r['tokens_per_s']:.0f} | {r['sync_s']:.3f} |", flush=True)
    if not args.skip_grpo:
        print("\n| backend | s per GRPO step (median) | mean completion tokens | max rollout/trainer log-prob gap |")
        print("|---|---|---|---|")
        for backend in args.backends.split(","):
            r = grpo_bench(backend, model_dir, data_dir, args, os.path.join(work, f"grpo_{backend}"))
            results[f"grpo/{backend}"] = r
            print(f"| {backend} | {r['step_s']:.2f} | {r['mean_completion_tokens']:.1f} | {r['logprob_diff_max']:.4f} |", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
