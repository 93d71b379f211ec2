"""What the audio encoder costs per GRPO step, with and without audiorl's once-per-clip encoding and cache.

    python bench/encoder_cost.py                 # tiny encoder and the full-size Qwen2-Audio encoder (random weights)
    python bench/encoder_cost.py --layers 8      # full width, fewer layers (scales linearly in layers)

Every Qwen2-Audio clip is padded to a 30 s window, so a 1 s clip costs as much as a 30 s one. A GRPO
step with P prompts x G completions and the language-model forwards for generation, (reference) and
loss would run the encoder P*G*F times if audio were encoded per completion and per forward, P*F
times when it is encoded once per unique clip per forward, and 0 times once the frozen encoder's
outputs are cached (audiorl's default). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from transformers import Qwen2AudioEncoder, Qwen2AudioEncoderConfig, WhisperFeatureExtractor

CONFIGS = {
    "tiny (audiorl make-tiny)": dict(d_model=64, encoder_layers=2, encoder_attention_heads=2, encoder_ffn_dim=128),
    "Qwen2-Audio-7B": dict(d_model=1280, encoder_layers=32, encoder_attention_heads=20, encoder_ffn_dim=5120),
}


def seconds_per_clip(config: dict, repeats: int) -> float:
    torch.manual_seed(0)
    encoder = Qwen2AudioEncoder(Qwen2AudioEncoderConfig(num_mel_bins=128, max_source_positions=1500, **config)).eval()
    features = WhisperFeatureExtractor(feature_size=128)(
        [np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1], sampling_rate=16000, return_tensors="pt"
    )["input_features"]
    with torch.no_grad():
        encoder(features)  # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            encoder(features)
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=8)
    parser.add_argument("--forwards", type=int, default=3, help="forwards needing audio per step (generation, reference, loss)")
    parser.add_argument("--layers", type=int, default=None, help="override the full-size layer count (time scales linearly)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    print(f"torch threads: {torch.get_num_threads()}; step: {args.prompts} prompts x {args.generations} completions, {args.forwards} audio forwards\n")
    print("| encoder | s per clip (30 s window) | per completion and forward | once per clip per forward | cached (frozen) |")
    print("|---|---|---|---|---|")
    for name, config in CONFIGS.items():
        config = dict(config)
        scale = 1.0
        if args.layers and config["encoder_layers"] > args.layers:
            scale = config["encoder_layers"] / args.layers
            config["encoder_layers"] = args.layers
        per_clip = seconds_per_clip(config, args.repeats) * scale
        naive = per_clip * args.prompts * args.generations * args.forwards
        unique = per_clip * args.prompts * args.forwards
        label = name + (f" ({config['encoder_layers']} layers timed, x{scale:g})" if scale != 1.0 else "")
        print(f"| {label} | {per_clip:.3f} | {naive:.1f} s | {unique:.1f} s | 0 s after first sight ({per_clip * args.prompts:.1f} s) |", flush=True)


if __name__ == "__main__":
    main()
