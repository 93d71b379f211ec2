"""Benchmark the quickstart: wall time and learning, per seed, and the audio ablation control.

    python bench/quickstart.py                       # seeds 0..3, real audio
    python bench/quickstart.py --seeds 0 --ablate    # the same run with every clip replaced by silence
    python bench/quickstart.py --seeds 0 --set model.audio_cache_mb=0   # any recipe override
    python bench/quickstart.py --recipe quickstart_ppo                  # another bundled quickstart

Runs the real CLI (`audiorl train recipes/quickstart.yaml`) in a subprocess per run and prints a
markdown table (the rows of BENCHMARKS.md), with the median GRPO step time read from metrics.jsonl
(`step_time`, logged every step) and where it went (the core's `timing/*` phases).
`--ablate` writes the recipe's synthesised data set with each
clip replaced by silence of the same length: the labels can then only be guessed, so held-out
accuracy must stay at chance. That is the control showing that the learning comes from the audio.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import soundfile as sf

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PHASES = ("generation", "rewards", "forward_backward", "optimizer", "other")
RECIPES = os.path.join(REPO, "recipes")
AUDIORL = os.path.join(os.path.dirname(sys.executable), "audiorl")


def silence_dataset(src_dir: str, dst_dir: str) -> None:
    shutil.copytree(src_dir, dst_dir, dirs_exist_ok=True)
    audio_dir = os.path.join(dst_dir, "audio")
    for name in os.listdir(audio_dir):
        path = os.path.join(audio_dir, name)
        info = sf.info(path)
        sf.write(path, np.zeros(info.frames, dtype=np.float32), info.samplerate)


def run(recipe: str, seed: int, out: str, ablate: bool, extra: list[str]) -> dict:
    # a re-run of the benchmark replaces its own earlier outputs (a used output_dir is refused otherwise)
    overrides = [f"seed={seed}", f"output_dir={out}", "overwrite=true", *extra]
    if ablate:
        from audiorl.data.synth import make_dataset
        from audiorl.rl.config import load_recipe

        config = load_recipe(os.path.join(RECIPES, f"{recipe}.yaml"), overrides)
        synth = config.data.synthesize
        clean = os.path.join(out + "_data_clean")
        paths = make_dataset(clean, synth.task, seed=synth.seed, n_train=synth.n_train, n_eval=synth.n_eval,
                             pairs_template=synth.pairs_template, speech_tasks=synth.speech_tasks)
        silent = os.path.join(out + "_data_silent")
        silence_dataset(clean, silent)
        overrides += [f"data.train={silent}/train.jsonl", f"data.eval={silent}/eval.jsonl", "data.synthesize=null"]
        if "pairs" in paths:
            overrides += [f"stages.{i}.pairs={silent}/pairs.jsonl" for i, s in enumerate(config.stages) if getattr(s, "source", None) == "offline"]
    start = time.perf_counter()
    proc = subprocess.run([AUDIORL, "train", os.path.join(RECIPES, f"{recipe}.yaml"), *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.load(open(os.path.join(out, "summary.json")))
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    stage = list(summary["stages"])[-1]  # the last RL stage
    steps = [r for r in rows if r["stage"] == stage and "step_time" in r][4:]  # after the warm-up steps
    phases = {p: float(np.median([r.get(f"timing/{p}_s", np.nan) for r in steps])) for p in PHASES}
    return {"seed": seed, "audio": "silence" if ablate else "real", "wall_s": wall, "step_s": float(np.median([r["step_time"] for r in steps])),
            "phases": phases, "rl_s": summary["timings"].get(f"{stage}_s", 0.0),
            "accuracy_key": next(k for k in summary["before"] if "accuracy" in k), **summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--recipe", default="quickstart", help="a bundled recipe: quickstart, quickstart_ppo, quickstart_dpo, ...")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ablate", action="store_true", help="replace every clip with silence")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides key=value")
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "bench"))
    args = parser.parse_args()
    print(f"{args.recipe}:\n")
    print("| audio | seed | wall s | SFT s | RL s | RL step s (median) | held-out acc before | after | sampled reward first 10 | last 10 | clips encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    results = []
    for seed in args.seeds:
        out = os.path.join(args.output, f"{args.recipe}_{'silence' if args.ablate else 'real'}_seed{seed}")
        shutil.rmtree(out, ignore_errors=True)
        r = run(args.recipe, seed, out, args.ablate, args.overrides)
        t = r["timings"]
        print(
            f"| {r['audio']} | {seed} | {r['wall_s']:.0f} | {t.get('sft_s', 0):.0f} | {r['rl_s']:.0f} | {r['step_s']:.3f} | "
            f"{r['before'][r['accuracy_key']]:.3f} | {r['after'][r['accuracy_key']]:.3f} | "
            f"{r['sampled_reward_first10']:.3f} | {r['sampled_reward_last10']:.3f} | {r['audio_encoder']['clips_encoded']} |",
            flush=True,
        )
        results.append(r)
    print("\nmedian ms per RL step by phase: " + ", ".join(
        f"{p} {1000 * np.median([r['phases'][p] for r in results]):.0f}" for p in PHASES
    ))


if __name__ == "__main__":
    main()
