"""Record TRL GRPO's loss and gradients on a fixed rollout batch: the reference of tests/test_rl_core_parity.py.

This ran once against audiorl at commit afaa84e, where GRPO was ``rl/grpo.py:AudioGRPOTrainer``
(a subclass of TRL 1.16's ``GRPOTrainer``), before that subclass was deleted in favour of the RL
core. It cannot run on later commits; it is kept to say exactly how the reference was made:

    git worktree add /tmp/old afaa84e && cd /tmp/old && python tests/parity/record_trl_grpo.py OUT.pt

The batch: the tiny Qwen2-Audio (seed 0), 2 prompts of the embedded pitch set (seed 0, 16 train
rows) x 4 completions sampled by the transformers engine, LoRA r=4 on the language model + the
projector, LoRA B matrices set to seeded noise (so every LoRA matrix has a gradient), advantages
fixed to a ramp. For each TRL ``loss_type`` (grpo, dapo, dr_grpo, bnpo), with beta 0 and 0.04, and
dapo with truncated importance sampling, the loss and gradients of 2 accumulated micro-batches of 4.
"""

import os
import pathlib
import sys
import tempfile

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


def main(out_path: str) -> None:
    from audiorl.data.synth import make_dataset
    from audiorl.model.tiny import build_tiny_qwen2_audio
    from audiorl.rl.config import load_recipe
    from audiorl.rl.train import build_grpo_trainer, open_session

    from tests.conftest import QUICKSTART, quick_overrides

    tmp = pathlib.Path(tempfile.mkdtemp())
    model_dir = build_tiny_qwen2_audio(str(tmp / "model"), seed=0)
    data = make_dataset(str(tmp / "pitch"), "pitch", seed=0, n_train=16, n_eval=8)
    overrides = quick_overrides(tmp, model_dir, data, **{
        "sft.enabled": False, "lora.r": 4, "lora.alpha": 8, "grpo.beta": 0.04,
        "grpo.prompts_per_step": 2, "grpo.num_generations": 4, "grpo.micro_batch_size": 4, "rollout.max_new_tokens": 12,
    })
    session = open_session(load_recipe(QUICKSTART, overrides))
    trainer = build_grpo_trainer(session)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in trainer.model.named_parameters():
            if "lora_B" in name and ".default." in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    trainable = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}

    rows = [r for r in session.train_rows if r["label"] == "high"][:1] + [r for r in session.train_rows if r["label"] == "low"][:1]
    inputs = [row for row in rows for _ in range(trainer.num_generations)]
    torch.manual_seed(0)
    trainer.model.train()
    batch = trainer._generate_and_score_completions(inputs)
    n = batch["completion_ids"].size(0)
    batch["advantages"] = torch.linspace(-1.0, 1.0, n)
    ids = torch.cat([batch["prompt_ids"], batch["completion_ids"]], 1)
    mask = torch.cat([batch["prompt_mask"], batch["completion_mask"]], 1)
    with torch.no_grad(), trainer._audio_for_rows(batch["audio_clips"]):
        current, _, _ = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, batch["completion_ids"].size(1))
    noise = torch.randn(current.shape, generator=gen) * 0.3
    sampling = current - noise.abs()  # the rollout engine found the samples less likely than the trainer does
    tis_cap = 1.2

    params = [p for p in trainer.model.parameters() if p.requires_grad]
    names = [n for n, p in trainer.model.named_parameters() if p.requires_grad]
    trainer.current_gradient_accumulation_steps = 2
    results = {}
    variants = [(lt, beta, False) for lt in ("grpo", "dapo", "dr_grpo", "bnpo") for beta in (0.0, 0.04)] + [("dapo", 0.04, True)]
    for loss_type, beta, tis in variants:
        trainer.loss_type, trainer.beta = loss_type, beta
        trainer.model.zero_grad()
        total = 0.0
        for start in (0, 4):
            micro = {k: (v[start : start + 4] if torch.is_tensor(v) and v.dim() > 0 and v.size(0) == n else v) for k, v in batch.items()}
            micro["audio_clips"] = batch["audio_clips"][start : start + 4]
            if tis:
                diff = (current - sampling)[start : start + 4]
                micro["importance_sampling_ratio"] = torch.exp(diff).clamp(max=tis_cap)
            loss = trainer._compute_loss(trainer.model, micro)
            loss.backward()
            total += loss.item()
        key = f"{loss_type}_beta{beta}" + ("_tis" if tis else "")
        results[key] = {"loss": total, "grads": {nm: p.grad.detach().clone() for nm, p in zip(names, params) if p.grad is not None}}
        print(key, total)
    torch.save({
        "trainable": trainable,
        "prompt_ids": batch["prompt_ids"], "prompt_mask": batch["prompt_mask"],
        "completion_ids": batch["completion_ids"], "completion_mask": batch["completion_mask"],
        "advantages": batch["advantages"], "ref_logps": batch["ref_per_token_logps"], "sampling_logps": sampling,
        "tis_cap": tis_cap, "clips": [[(os.path.relpath(c.source, os.path.dirname(data["train"])), c.key) for c in row] for row in batch["audio_clips"]],
        "max_completion_length": 12, "epsilon": 0.2, "results": results,
    }, out_path)


if __name__ == "__main__":
    sys.path.insert(0, os.getcwd())
    main(sys.argv[1])
