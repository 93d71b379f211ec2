"""Where a GRPO step's time goes, against its floor: generation + one forward/backward of the same tokens.

    python bench/grpo_step.py                      # the quickstart recipe: SFT warm start, then 40 GRPO steps
    python bench/grpo_step.py --steps 60 --set rollout.max_new_tokens=96

Runs the quickstart's SFT stage, then GRPO steps in this process. After each step the floor is
timed on the same rows: one plain transformers ``generate`` from precomputed input embeddings with
as many new tokens as the step's longest completion, plus one forward and backward of the step's
sequences with the same trainable parameters (full logits, mean token loss). Prints the median of
each phase (the core's own timers: generation, rewards, forward/backward, optimizer, everything
else), the step, the floor and their ratio, over the steps after ``--skip`` (warm-up, new clips).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "quickstart.yaml")
PHASES = ("generation", "rewards", "forward_backward", "optimizer", "other")


def floor_seconds(recipe, batch) -> float:
    import torch

    model, lm, forward = recipe.lm.model, recipe.lm, recipe.forward
    seqs = batch.sequences()
    new_tokens = int(batch.completion_mask.sum(1).max())
    prompt_ids, prompt_mask = batch.prompt_ids, batch.prompt_mask
    with torch.no_grad():
        embeds = forward.model_inputs(model, prompt_ids, prompt_mask, batch.clips, "policy")["inputs_embeds"]
    start = time.perf_counter()
    with torch.no_grad():
        model.generate(
            inputs_embeds=embeds, attention_mask=prompt_mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
            do_sample=True, pad_token_id=lm.tokenizer.pad_token_id, bos_token_id=None,
        )
    inputs = forward.model_inputs(model, seqs.input_ids, seqs.attention_mask, seqs.clips, "policy")
    labels = seqs.input_ids.masked_fill(seqs.attention_mask == 0, -100)
    labels[:, : seqs.start] = -100
    loss = model(**inputs, labels=labels).loss
    loss.backward()
    model.zero_grad(set_to_none=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--skip", type=int, default=4, help="steps left out of the medians (warm-up)")
    parser.add_argument("--set", dest="overrides", nargs="*", default=[], help="recipe overrides key=value")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, REPO)
    from audiorl.rl.config import load_recipe
    from audiorl.rl.policy_gradient import PolicyGradientStage
    from audiorl.rl.sft import SFTStage
    from audiorl.rl.train import RLRecipe

    out = tempfile.mkdtemp(prefix="audiorl-bench-")
    config = load_recipe(RECIPE, [f"output_dir={out}", f"stages.grpo.max_steps={args.steps}", "eval.every_steps=0", *args.overrides])
    recipe = RLRecipe(config)
    recipe.setup()
    sft, grpo = config.enabled_stages()
    SFTStage(recipe, sft).run()
    recipe.finish_stage(sft)
    stage = PolicyGradientStage(recipe, grpo)
    stage.setup()
    original_prepare = stage.prepare
    last = {}

    def keep(batch, stats):  # the step's batch, for the floor
        last["batch"] = batch
        return original_prepare(batch, stats)

    stage.prepare = keep
    rows = []
    for i in range(args.steps):
        metrics = stage.step(i)
        recipe.global_step += 1
        metrics["floor_s"] = floor_seconds(recipe, last["batch"])
        rows.append(metrics)
    recipe.cleanup()
    kept = rows[args.skip :]

    def median(key: str) -> float:
        return statistics.median(r[key] for r in kept)

    print(f"| steps | {' | '.join(PHASES)} | step | floor | step/floor |")
    print("|---|" + "---|" * (len(PHASES) + 3))
    phase_ms = " | ".join(f"{1000 * median(f'timing/{p}_s'):.0f}" for p in PHASES)
    ratio = statistics.median(r["step_time"] / r["floor_s"] for r in kept)
    print(f"| {args.skip + 1}-{args.steps} | {phase_ms} | {1000 * median('step_time'):.0f} | {1000 * median('floor_s'):.0f} | {ratio:.2f} |")
    print(f"(ms, medians; mean completion tokens {statistics.mean(r['completions/mean_length'] for r in kept):.1f}, "
          f"reward last 10 {statistics.mean(r['reward'] for r in rows[-10:]):.3f})")


if __name__ == "__main__":
    main()
