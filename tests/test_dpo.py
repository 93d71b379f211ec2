"""DPO on the RL core: offline pairs with audio (checked rows), online pairs from ranked rollouts, the loss
mask by token role, the reference (adapter-disabled or a frozen copy), and audio in every forward."""

from __future__ import annotations

import inspect
import json
import os

import pytest
import torch
from audiorl.common.errors import DataError
from audiorl.data.preferences import load_pairs
from audiorl.data.synth import label_pairs, make_dataset
from audiorl.rl.batch import THINK, token_roles
from audiorl.rl.config import load_recipe
from audiorl.rl.dpo import DPOStage
from audiorl.rl.policy_gradient import Stats
from audiorl.rl.rollout import score
from audiorl.rl.train import RLRecipe

from tests.conftest import QUICKSTART, quick_overrides

RECIPES = os.path.dirname(QUICKSTART)
TEMPLATE = "<think>I compare the pitch with a middle tone.</think><answer>{label}</answer>"


@pytest.fixture(scope="module")
def pair_data(tmp_path_factory):
    return make_dataset(str(tmp_path_factory.mktemp("pairs")), "pitch", seed=0, n_train=16, n_eval=8, pairs_template=TEMPLATE)


def make_dpo(tmp_path, tiny_model_dir, data, source="online", **extra):
    recipe_file = "quickstart_dpo.yaml" if source == "online" else "quickstart_dpo_offline.yaml"
    overrides = [o for o in quick_overrides(tmp_path, tiny_model_dir, data) if not o.startswith(("stages.grpo.", "stages.sft."))]
    values = {"stages.sft.enabled": False, "stages.dpo.max_steps": 2, "stages.dpo.prompts_per_step": 4, "stages.dpo.num_generations": 4,
              "stages.dpo.micro_batch_size": 2}
    if source == "offline":
        values["stages.dpo.pairs"] = data["pairs"]
    values.update(extra)
    recipe = RLRecipe(load_recipe(os.path.join(RECIPES, recipe_file), overrides + [f"{k}={v}" for k, v in values.items()]))
    recipe.setup()
    stage = DPOStage(recipe, recipe.config.enabled_stages()[0])
    stage.setup()
    return recipe, stage


def test_synthesised_pairs_are_right_vs_wrong_answers(pair_data):
    pairs = [json.loads(line) for line in open(pair_data["pairs"])]
    train = [json.loads(line) for line in open(pair_data["train"])]
    assert len(pairs) == len(train)
    for pair, row in zip(pairs, train):
        assert pair["audio"] == row["audio"] and pair["chosen"] == TEMPLATE.format(label=row["label"])
        assert pair["rejected"] != pair["chosen"] and pair["rejected"].startswith("<think>")
    assert label_pairs([{"label": "x", "choices": ["x"]}], TEMPLATE) == []  # no wrong choice: no pair


def test_bad_pair_rows_are_named(tmp_path, pair_data):
    rows = [json.loads(line) for line in open(pair_data["pairs"])][:3]
    base = os.path.dirname(pair_data["pairs"])
    for row in rows:
        row["audio"] = os.path.join(base, row["audio"])
    path = tmp_path / "p.jsonl"

    def write(rs):
        path.write_text("".join(json.dumps(r) + "\n" for r in rs))
        return str(path)

    with pytest.raises(DataError, match=rf"{path} row 1: column 'rejected' is missing"):
        load_pairs(write([rows[0], {k: v for k, v in rows[1].items() if k != "rejected"}]))
    with pytest.raises(DataError, match=rf"{path} row 0: column 'chosen' is empty"):
        load_pairs(write([{**rows[0], "chosen": " "}]))
    with pytest.raises(DataError, match=r"row 2: audio file '/nowhere.wav' does not exist"):
        load_pairs(write([rows[0], rows[1], {**rows[2], "audio": "/nowhere.wav"}]))
    kept = load_pairs(write([rows[0], {**rows[1], "rejected": rows[1]["chosen"]}, rows[2]]))
    assert [p["_row"] for p in kept] == [0, 2]  # identical answers teach nothing: dropped


class Spy:
    def __init__(self, embedder):
        self.calls = []
        original = embedder.audio_embeds

        def spy(model, clips, role="policy"):
            callers = {f.function for f in inspect.stack()[1:10]}
            self.calls.append(("update" in callers, role, torch.is_grad_enabled(), len(clips)))
            return original(model, clips, role)

        embedder.audio_embeds = spy


@pytest.mark.parametrize("source", ["offline", "online"])
def test_audio_reaches_policy_and_reference_forwards_of_both_answers(tmp_path, tiny_model_dir, pair_data, source):
    # rewards that differ within a group from the first step, so that every group gives a pair
    recipe, stage = make_dpo(tmp_path, tiny_model_dir, pair_data, source, **{"rewards.0.name": "tests.reward_plugins:length_penalty"})
    spy = Spy(recipe.embedder)
    stage.run()
    loss_calls = [c for c in spy.calls if c[0]]
    assert {(role, grad) for _, role, grad, _ in loss_calls} == {("policy", True), ("reference", False)}
    # one forward per micro-batch of 2 pairs carries 4 clips: chosen and rejected rows, each with its prompt's audio
    assert all(n == 4 for *_, n in loss_calls)


def test_online_pairs_are_the_best_and_worst_of_each_group_and_ties_are_skipped(tmp_path, tiny_model_dir, pair_data):
    recipe, stage = make_dpo(tmp_path, tiny_model_dir, pair_data, "online")
    batch = stage.rollouts.generate(recipe.train_rows[:3], 4)
    score(batch, stage.rewards)
    batch.total = torch.tensor([0.1, 0.9, 0.5, float("nan"), 0.3, 0.3, 0.3, 0.3, 1.0, float("nan"), float("nan"), float("nan")])
    stats = Stats()
    pairs = stage.pairs_from_rollouts(batch, stats)
    assert len(pairs) == 1 and stats.metrics()["dpo/skipped_groups"] == 2  # a tie, and a group with one reward
    chosen = batch.completion_ids[1][batch.completion_mask[1].bool()]
    rejected = batch.completion_ids[0][batch.completion_mask[0].bool()]
    assert pairs.chosen_ids[0][: len(chosen)].tolist() == chosen.tolist()
    assert pairs.rejected_ids[0][: len(rejected)].tolist() == rejected.tolist()
    assert pairs.clips[0] == batch.clips[1]


def test_loss_on_masks_token_roles(tmp_path, tiny_model_dir, pair_data):
    recipe, stage = make_dpo(tmp_path, tiny_model_dir, pair_data, "offline", **{"stages.dpo.loss_on": "[text]"})
    think_ids = recipe.lm.think_token_ids()
    assert think_ids is not None
    pairs = stage.pairs_from_rows(stage.sampler.next(2), Stats())
    roles = token_roles(pairs.chosen_ids, think_ids)
    assert (roles == THINK).any()
    assert pairs.chosen_loss_mask[roles == THINK].sum() == 0  # think tokens are out of the loss
    assert pairs.chosen_loss_mask[(roles != THINK) & pairs.chosen_mask.bool()].all()
    # the answers differ only in the answer text: that is what the loss sees
    assert pairs.chosen_loss_mask.sum() < pairs.chosen_mask.sum()


@pytest.mark.parametrize("lora", [True, False])
def test_the_reference_stays_at_the_stage_start(tmp_path, tiny_model_dir, pair_data, lora):
    recipe, stage = make_dpo(tmp_path, tiny_model_dir, pair_data, "offline", **{"lora.enabled": lora, "stages.dpo.learning_rate": 1e-2})
    assert stage.reference.kind == ("adapter_disabled" if lora else "frozen_copy")
    pairs = stage.pairs_from_rows(stage.sampler.next(2), Stats())
    seqs = pairs.sequences()
    ref_before = stage.reference.token_logps(recipe.forward, recipe.lm.model, seqs)
    policy_before = recipe.forward.token_logps(recipe.lm.model, seqs, "policy")[0].detach()
    stage.run()
    ref_after = stage.reference.token_logps(recipe.forward, recipe.lm.model, seqs)
    policy_after = recipe.forward.token_logps(recipe.lm.model, seqs, "policy")[0].detach()
    mask = pairs.loss_mask.bool()
    assert (policy_after - policy_before)[mask].abs().max() > 1e-3
    assert (ref_after - ref_before)[mask].abs().max() < 1e-5


def test_bad_pair_rows_stop_the_run_before_the_model_loads(tmp_path, tiny_model_dir, pitch_data, monkeypatch):
    import audiorl.model
    from audiorl.rl.config import load_recipe
    from audiorl.rl.train import train

    recipe = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "quickstart_dpo_offline.yaml")
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text(json.dumps({"prompt": "p", "audio": "/nowhere.wav", "chosen": "a", "rejected": "b"}) + "\n")
    config = load_recipe(recipe, [
        f"output_dir={tmp_path / 'run'}", f"model.path={tiny_model_dir}", "model.build_tiny=false", "data.synthesize=null",
        f"data.train={pitch_data['train']}", f"data.eval={pitch_data['eval']}", f"stages.dpo.pairs={pairs}",
    ])

    def no_load(*args, **kwargs):
        raise AssertionError("the model loaded before the pairs were checked")

    monkeypatch.setattr(audiorl.model, "load_audio_lm", no_load)
    with pytest.raises(DataError, match=rf"{pairs} row 0: audio file '/nowhere.wav' does not exist"):
        train(config)
