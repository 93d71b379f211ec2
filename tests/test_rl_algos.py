"""The RL registries: every entry resolves, names never overlap, each part matches a hand-computed example."""

from __future__ import annotations

import math

import pytest
import torch
from audiorl.common.errors import AudioRLError
from audiorl.rl.algos import (
    ADVANTAGES,
    KL_ESTIMATORS,
    LOSS_AGGREGATIONS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    REGISTRIES,
    TRL_LOSS_TYPES,
    VALUE_LOSSES,
    AdvantageInputs,
    AggregationContext,
    PolicyLossInputs,
    PreferenceInputs,
)
from audiorl.rl.batch import AUDIO, TEXT, THINK, PairBatch, role_mask, token_roles


def test_every_registered_name_resolves_and_names_are_unique_across_registries():
    seen: dict[str, str] = {}
    for key, registry in REGISTRIES.items():
        for name in registry.names():
            assert callable(registry.get(name)), (key, name)
            assert name not in seen, f"'{name}' is both a {seen[name]} and a {registry.kind}"
            seen[name] = registry.kind
    assert {"grpo", "dr_grpo", "rloo", "gae"} <= set(ADVANTAGES.names())
    assert {"ppo_clip", "gspo"} <= set(POLICY_LOSSES.names())
    assert set(TRL_LOSS_TYPES.values()) <= set(LOSS_AGGREGATIONS.names())
    assert {"dpo_sigmoid", "ipo"} <= set(PREFERENCE_LOSSES.names())
    assert {"k1", "k2", "k3"} <= set(KL_ESTIMATORS.names())


def test_a_users_part_is_a_module_function():
    fn = ADVANTAGES.get("audiorl.rl.algos.advantages:rloo")
    assert fn is ADVANTAGES.get("rloo")
    with pytest.raises(AudioRLError, match="could not be imported"):
        ADVANTAGES.get("no.such.module:fn")
    with pytest.raises(AudioRLError, match=r"unknown advantage estimator 'grp' \(did you mean 'grpo'\?\)"):
        ADVANTAGES.get("grp")


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.5, 0.5, float("nan"), 1.0])
    assert ADVANTAGES.get("dr_grpo")(AdvantageInputs(r, 2)).tolist() == [0.5, -0.5, 0.0, 0.0, 0.0, 0.0]
    grpo = ADVANTAGES.get("grpo")(AdvantageInputs(r, 2))
    assert grpo[0] == pytest.approx(0.5 / (math.sqrt(0.5) + 1e-4)) and grpo[1] == pytest.approx(-grpo[0])
    assert grpo[2:].tolist() == [0.0, 0.0, 0.0, 0.0]  # a tie, and a group with one reward: no signal
    assert ADVANTAGES.get("rloo")(AdvantageInputs(torch.tensor([3.0, 0.0, 0.0]), 3)).tolist() == [3.0, -1.5, -1.5]


def test_gae_by_hand():
    values = torch.tensor([[0.2, 0.4, 0.6, 9.0]])
    rewards = torch.tensor([[0.0, 0.0, 1.0, 5.0]])  # the last column is padding
    mask = torch.tensor([[1, 1, 1, 0]])
    gamma, lam = 0.9, 0.5
    d2 = 1.0 - 0.6
    d1 = 0.0 + gamma * 0.6 - 0.4
    d0 = 0.0 + gamma * 0.4 - 0.2
    a2, a1 = d2, d1 + gamma * lam * d2
    a0 = d0 + gamma * lam * a1
    out = ADVANTAGES.get("gae")(AdvantageInputs(torch.ones(1), mask=mask, token_rewards=rewards, values=values, gamma=gamma, lam=lam))
    assert out[0].tolist() == pytest.approx([a0, a1, a2, 0.0])
    with pytest.raises(ValueError, match="needs per-token rewards, a critic"):
        ADVANTAGES.get("gae")(AdvantageInputs(torch.ones(1)))


def test_ppo_clip_with_clip_higher_and_gspo():
    logps = torch.log(torch.tensor([[1.3, 0.7, 1.1]]))
    x = PolicyLossInputs(logps, torch.zeros(1, 3), torch.tensor([1.0]), torch.ones(1, 3), epsilon_low=0.2, epsilon_high=0.28)
    out = POLICY_LOSSES.get("ppo_clip")(x)
    assert out.per_token[0].tolist() == pytest.approx([-1.28, -0.7, -1.1])
    assert out.clipped_high.tolist() == [[True, False, False]] and not out.clipped_low.any()
    seq = POLICY_LOSSES.get("gspo")(x)
    ratio = math.exp((math.log(1.3) + math.log(0.7) + math.log(1.1)) / 3)
    assert seq.per_token.shape == (1, 1) and seq.per_token.item() == pytest.approx(-ratio)


def test_aggregations_sum_to_the_step_loss_over_micro_batches():
    per_token = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0], [4.0, 4.0, 4.0], [1.0, 0.0, 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0], [1, 1, 1], [1, 0, 0]]).float()
    halves = [slice(0, 2), slice(2, 4)]
    ctx = AggregationContext(micro_batches=2, step_tokens=float(mask.sum()), max_completion_length=3)

    def total(name):
        return sum(LOSS_AGGREGATIONS.get(name)(per_token[h], mask[h], ctx).item() for h in halves)

    assert total("token_mean") == pytest.approx(19 / 7)
    assert total("seq_mean_token_mean") == pytest.approx((1.5 + 3.0 + 4.0 + 1.0) / 4)
    assert total("seq_mean_token_sum") == pytest.approx((3 + 3 + 12 + 1) / 4)
    assert total("seq_mean_token_sum_norm") == pytest.approx((3 + 3 + 12 + 1) / (4 * 3))
    assert total("microbatch_token_mean") == pytest.approx((6 / 3 + 13 / 4) / 2)


def test_value_losses_by_hand():
    values, old, returns = torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.0]), torch.tensor([0.0, 1.0])
    loss, clipped = VALUE_LOSSES.get("clipped_mse")(values, old, returns, 0.2)
    # row 0: V moved 0.5 from V_old; clipped to 0.7 -> (0.7)^2 < 1.0^2: the unclipped branch is larger
    assert loss.tolist() == pytest.approx([0.5, 0.5]) and clipped.tolist() == [False, False]
    loss, clipped = VALUE_LOSSES.get("clipped_mse")(torch.tensor([0.0]), torch.tensor([1.0]), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(0.5 * 4.0) and clipped.tolist() == [False]
    loss, clipped = VALUE_LOSSES.get("clipped_mse")(torch.tensor([1.5]), torch.tensor([1.0]), torch.tensor([0.0]), 0.2)
    assert loss.item() == pytest.approx(0.5 * 1.5**2) and clipped.tolist() == [False]
    loss, clipped = VALUE_LOSSES.get("clipped_mse")(torch.tensor([0.5]), torch.tensor([1.0]), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(0.5 * 1.5**2) and clipped.tolist() == [False]
    loss, clipped = VALUE_LOSSES.get("clipped_mse")(torch.tensor([1.9]), torch.tensor([1.0]), torch.tensor([2.0]), 0.2)
    assert loss.item() == pytest.approx(0.5 * 0.8**2) and clipped.tolist() == [True]  # clipping keeps the step small


def test_kl_estimators_by_hand():
    logp, ref = torch.tensor([-1.0]), torch.tensor([-1.5])
    assert KL_ESTIMATORS.get("k1")(logp, ref).item() == pytest.approx(0.5)
    assert KL_ESTIMATORS.get("k2")(logp, ref).item() == pytest.approx(0.125)
    assert KL_ESTIMATORS.get("k3")(logp, ref).item() == pytest.approx(math.exp(-0.5) + 0.5 - 1)


def test_preference_losses_by_hand():
    x = PreferenceInputs(torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]), beta=0.5)
    assert x.logits.item() == pytest.approx(2.0)
    assert PREFERENCE_LOSSES.get("dpo_sigmoid")(x).item() == pytest.approx(-math.log(1 / (1 + math.exp(-1.0))))
    smoothed = PreferenceInputs(x.policy_chosen, x.policy_rejected, x.ref_chosen, x.ref_rejected, beta=0.5, label_smoothing=0.1)
    expected = 0.9 * math.log(1 + math.exp(-1.0)) + 0.1 * math.log(1 + math.exp(1.0))
    assert PREFERENCE_LOSSES.get("dpo_sigmoid")(smoothed).item() == pytest.approx(expected)
    assert PREFERENCE_LOSSES.get("ipo")(x).item() == pytest.approx((2.0 - 1.0) ** 2)
    assert getattr(PREFERENCE_LOSSES.get("ipo"), "average_logps", False)


def test_token_roles_and_masks_work_on_id_ranges():
    ids = torch.tensor([[3, 10, 4, 5, 11, 6, 50, 51, 7], [10, 4, 4, 4, 4, 4, 4, 4, 4]])
    roles = token_roles(ids, think_ids=(10, 11), audio_range=(50, 60))
    assert roles[0].tolist() == [TEXT, THINK, THINK, THINK, THINK, TEXT, AUDIO, AUDIO, TEXT]
    assert roles[1].tolist() == [THINK] * 9  # an unclosed think runs to the end
    assert role_mask(roles, ["text", "think"])[0].tolist() == [1, 1, 1, 1, 1, 1, 0, 0, 1]
    assert role_mask(roles, ["audio"])[0].tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 0]


def test_pair_batch_lays_out_chosen_then_rejected():
    pairs = PairBatch.build([[1, 2, 3], [4]], [[5, 6], [7]], [[8], [9, 9, 9]], [[], []], pad_id=0)
    seqs = pairs.sequences()
    assert seqs.start == 3 and seqs.input_ids.tolist() == [
        [1, 2, 3, 5, 6, 0], [0, 0, 4, 7, 0, 0], [1, 2, 3, 8, 0, 0], [0, 0, 4, 9, 9, 9],
    ]
    assert pairs.loss_mask.tolist() == [[1, 1, 0], [1, 0, 0], [1, 0, 0], [1, 1, 1]]
    one = pairs.select([1])
    assert one.sequences().input_ids.tolist() == [[4, 7, 0, 0], [4, 9, 9, 9]]


def test_docstring_examples():
    import doctest

    from audiorl.rl import batch
    from audiorl.rl.algos import advantages, kl, policy_losses, preference

    for module in (advantages, policy_losses, kl, preference, batch):
        result = doctest.testmod(module)
        assert result.failed == 0 and result.attempted > 0, module.__name__
