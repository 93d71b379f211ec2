"""GRPO on the RL core computes the loss and gradients TRL's GRPOTrainer computed, on a fixed rollout batch.

The reference (tests/parity/trl_grpo_reference.pt) was recorded by tests/parity/record_trl_grpo.py
with audiorl's former TRL subclass (commit afaa84e) before it was deleted: for each TRL
``loss_type``, with and without the KL term, and with truncated importance sampling, the loss and
every trainable parameter's gradient over 2 accumulated micro-batches. The same tiny model (seed
0), the same embedded clips and the same LoRA weights go through the core's own forward and loss.
"""

from __future__ import annotations

import os

import pytest
import torch
from audiorl.rl.algos import LOSS_AGGREGATIONS, TRL_LOSS_TYPES, AggregationContext
from audiorl.rl.batch import RolloutBatch
from audiorl.rl.config import load_recipe
from audiorl.rl.policy_gradient import PolicyGradientStage, Stats
from audiorl.rl.train import RLRecipe

from tests.conftest import QUICKSTART, quick_overrides

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parity", "trl_grpo_reference.pt")
TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def core(tmp_path_factory, tiny_model_dir, pitch_data):
    ref = torch.load(REFERENCE)
    tmp = tmp_path_factory.mktemp("parity")
    overrides = quick_overrides(tmp, tiny_model_dir, pitch_data, **{
        "stages.sft.enabled": False, "lora.r": 4, "lora.alpha": 8, "stages.grpo.beta": 0.04,
        "stages.grpo.prompts_per_step": 2, "stages.grpo.num_generations": 4, "stages.grpo.micro_batch_size": 4,
        "rollout.max_new_tokens": 12,
    })
    recipe = RLRecipe(load_recipe(QUICKSTART, overrides))
    recipe.setup()
    stage = PolicyGradientStage(recipe, recipe.config.enabled_stages()[0])
    stage.setup()
    params = dict(recipe.lm.model.named_parameters())
    assert set(ref["trainable"]) == {n for n, p in params.items() if p.requires_grad}
    with torch.no_grad():
        for name, value in ref["trainable"].items():
            params[name].copy_(value)
    data_dir = os.path.dirname(pitch_data["train"])
    clips = []
    for row in ref["clips"]:
        clips.append([recipe.store.add_file(os.path.join(data_dir, path)) for path, _ in row])
        assert [c.key for c in clips[-1]] == [key for _, key in row], "the embedded pitch clips changed"
    n = ref["completion_ids"].size(0)
    batch = RolloutBatch(
        prompt_ids=ref["prompt_ids"], prompt_mask=ref["prompt_mask"], completion_ids=ref["completion_ids"],
        completion_mask=ref["completion_mask"], clips=clips, rows=[{}] * n, group_ids=torch.arange(n) // 4,
        texts=[""] * n, finished=torch.ones(n, dtype=torch.bool), sampling_logps=ref["sampling_logps"],
    )
    batch.advantages = ref["advantages"]
    batch.ref_logps = stage._per_token(batch, lambda m: stage.reference.token_logps(recipe.forward, recipe.lm.model, m.sequences()))
    yield ref, recipe, stage, batch
    recipe.cleanup()


def test_reference_logps_equal_trls(core):
    ref, _, _, batch = core
    mask = batch.completion_mask.bool()
    assert (batch.ref_logps - ref["ref_logps"])[mask].abs().max() < TOLERANCE


@pytest.mark.parametrize("variant", sorted(torch.load(REFERENCE)["results"]))
def test_loss_and_gradients_equal_trls(core, variant):
    ref, recipe, stage, batch = core
    expected = ref["results"][variant]
    loss_type, beta = variant.split("_beta")[0], float(variant.split("_beta")[1].split("_")[0])
    stage.aggregate = LOSS_AGGREGATIONS.get(TRL_LOSS_TYPES[loss_type])
    stage.config.beta = beta
    stage.config.tis_cap = ref["tis_cap"] if variant.endswith("_tis") else None
    model = recipe.lm.model
    model.zero_grad()
    ctx = AggregationContext(micro_batches=2, step_tokens=float(batch.loss_mask.sum()), max_completion_length=ref["max_completion_length"])
    total = 0.0
    for start in (0, 4):
        loss = stage.policy_loss(batch.select(range(start, start + 4)), ctx, Stats())
        loss.backward()
        total += loss.item()
    assert total == pytest.approx(expected["loss"], abs=TOLERANCE)
    grads = {name: p.grad for name, p in model.named_parameters() if p.requires_grad and p.grad is not None}
    assert set(grads) == set(expected["grads"])
    worst = max((grads[name] - g).abs().max().item() for name, g in expected["grads"].items())
    assert worst < TOLERANCE, f"max gradient difference {worst:.2e}"
    assert any(g.abs().max() > 1e-3 for g in expected["grads"].values())  # the comparison is not of zeros

