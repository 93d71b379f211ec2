"""Benchmark the quickstart: wall time and learning, per seed, and the audio ablation control.

    python bench/quickstart.py                       # seeds 0..3, real audio
    python bench/quickstart.py --seeds 0 --ablate    # the same run with every clip replaced by silence
    python bench/quickstart.py --seeds 0 --set model.audio_cache_mb=0   # any recipe override

Runs the real CLI (`audiorl train recipes/quickstart.yaml`) in a subprocess per run and prints a
markdown table (the rows of BENCHMARKS.md). `--ablate` rewrites the synthesised data set with each
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
RECIPE = os.path.join(REPO, "recipes", "quickstart.yaml")
AUDIORL = os.path.join(os.path.dirname(sys.executable), "audiorl")


def silence_dataset(src_dir: str, dst_dir: str) -> None:
    shutil.copytree(src_dir, dst_dir, dirs_exist_ok=True)
    audio_dir = os.path.join(dst_dir, "audio")
    for name in os.listdir(audio_dir):
        path = os.path.join(audio_dir, name)
        info = sf.info(path)
        sf.write(path, np.zeros(info.frames, dtype=np.float32), info.samplerate)


def run(seed: int, out: str, ablate: bool, extra: list[str]) -> dict:
    overrides = [f"seed={seed}", f"output_dir={out}", *extra]
    if ablate:
        from audiorl.data.synth import make_dataset

        clean = os.path.join(out + "_data_clean")
        make_dataset(clean, "pitch", seed=0, n_train=256, n_eval=64)
        silent = os.path.join(out + "_data_silent")
        silence_dataset(clean, silent)
        overrides += [f"data.train={silent}/train.jsonl", f"data.eval={silent}/eval.jsonl", "data.synthesize=null"]
    start = time.perf_counter()
    proc = subprocess.run([AUDIORL, "train", RECIPE, *overrides], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    summary = json.load(open(os.path.join(out, "summary.json")))
    return {"seed": seed, "audio": "silence" if ablate else "real", "wall_s": wall, **summary}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    parser.add_argument("--ablate", action="store_true", help="replace every clip with silence")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides key=value")
    parser.add_argument("--output", default=os.path.join(REPO, "runs", "bench"))
    args = parser.parse_args()
    print("| audio | seed | wall s | SFT s | GRPO s | held-out acc before | after | sampled reward first 10 | last 10 | clips encoded |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        out = os.path.join(args.output, f"{'silence' if args.ablate else 'real'}_seed{seed}")
        shutil.rmtree(out, ignore_errors=True)
        r = run(seed, out, args.ablate, args.overrides)
        t = r["timings"]
        print(
            f"| {r['audio']} | {seed} | {r['wall_s']:.0f} | {t.get('sft_s', 0):.0f} | {t.get('grpo_s', 0):.0f} | "
            f"{r['before']['eval/label_accuracy']:.3f} | {r['after']['eval/label_accuracy']:.3f} | "
            f"{r['sampled_reward_first10']:.3f} | {r['sampled_reward_last10']:.3f} | {r['audio_encoder']['clips_encoded']} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
