"""Reward registry, built-ins, aggregation and the errors for misbehaving rewards."""

from __future__ import annotations

import doctest
import math
from types import SimpleNamespace

import audiorl.rewards.builtin as builtin
import numpy as np
import pytest
from audiorl.common.errors import AudioRLError, ConfigError, RewardError
from audiorl.rewards import REWARDS, RewardSet, resolve_reward, reward
from audiorl.rewards.asr import asr_correctness
from audiorl.rewards.builtin import cot_format, label_accuracy, mcq_accuracy, think_length
from hypothesis import given, settings
from hypothesis import strategies as st


def spec(name, weight=1.0, **kwargs):
    return SimpleNamespace(name=name, weight=weight, kwargs=kwargs, alias=None)


def test_builtin_docstring_examples():
    assert doctest.testmod(builtin).failed == 0


def test_builtins_are_registered():
    assert {"label_accuracy", "cot_format", "think_length", "asr_correctness", "mcq_accuracy"} <= set(REWARDS.names())


@pytest.mark.parametrize(
    "completion,label,expected",
    [
        ("<think>x</think><answer>HIGH</answer>", "high", 1.0),
        ("<think>x</think><answer> high. </answer>", "high", 1.0),
        ("<think>x</think><answer>low</answer>", "high", 0.0),
        ("I'd say it is High!", "high", 1.0),  # final word
        ("high, no wait, low", "high", 0.0),
        ("<think>it is high</think>low", "high", 0.0),  # the thinking is not the answer
        ("<answer>high</answer><answer>low</answer>", "low", 1.0),  # the last answer counts
        ("<answer>New York</answer>", "new york", 1.0),
        ("<answer>york</answer>", "new york", 0.0),
        ("<answer>B</answer>", ["b", "blue"], 1.0),
        ("", "high", 0.0),
    ],
)
def test_label_accuracy(completion, label, expected):
    assert label_accuracy([completion], [label]) == [expected]


def test_label_accuracy_reads_chat_messages():
    assert label_accuracy([[{"role": "assistant", "content": "<answer>low</answer>"}]], ["low"]) == [1.0]


@pytest.mark.parametrize(
    "completion,expected",
    [
        ("<think>pitch is high</think><answer>high</answer>", 1.0),
        ("  <think>a</think>\nhigh", 1.0),
        ("<think>a</think><answer></answer>", 0.0),
        ("<think>a</think><answer>x", 0.0),
        ("<think>a</think>x<answer>y</answer>", 0.0),
        ("x<think>a</think>y", 0.0),
        ("<think>a</think><think>b</think>y", 0.0),
        ("<think>a", 0.0),
    ],
)
def test_cot_format(completion, expected):
    assert cot_format([completion]) == [expected]


def test_think_length_counts_words_and_cjk_characters():
    assert think_length(["<think>one two three</think>a"], max_length=3) == [1.0]
    assert think_length(["<think>one two three</think>a"], max_length=2) == [0.0]
    assert think_length(["<think>今天天气</think>a"], max_length=3) == [0.0]
    assert think_length(["<think>今天天气</think>a"], max_length=4) == [1.0]
    assert think_length(["<think>abc</think>"], max_length=3, unit="chars") == [1.0]


def test_asr_correctness_wer_and_cer():
    ref = ["the cat sat on the mat"]
    assert asr_correctness(["<answer>The cat sat on the mat.</answer>"], ref) == [1.0]
    assert asr_correctness(["the cat sat on a mat"], ref) == pytest.approx([1 - 1 / 6])
    assert asr_correctness(["completely different words here now ok and more"], ref) == [0.0]  # clipped at 0
    # Chinese: character error rate, full-width punctuation ignored
    assert asr_correctness(["今天天气很好。"], ["今天天气很好"]) == [1.0]
    assert asr_correctness(["今天天气不好"], ["今天天气很好"]) == pytest.approx([1 - 1 / 6])
    assert asr_correctness(["ｔｈｅ ｃａｔ"], ["the cat"], language=["en"]) == [1.0]


# --------------------------------------------------------------------- registry
def test_decorator_registers_and_yaml_resolves_by_name():
    @reward("test_always_half")
    def always_half(completions, **_):
        return [0.5] * len(completions)

    assert resolve_reward("test_always_half") is always_half
    scores = RewardSet([spec("test_always_half", weight=2.0)]).score(["a", "b"])
    assert scores.total.tolist() == [1.0, 1.0]


def test_duplicate_registration_is_refused():
    with pytest.raises(AudioRLError, match="already registered"):
        reward("label_accuracy")(lambda completions, **_: [])


def test_module_function_resolution():
    fn = resolve_reward("tests.reward_plugins:length_penalty")
    assert fn(["ab", "abcd"]) == [-2.0, -4.0]


def test_unknown_reward_names_the_nearest():
    with pytest.raises(AudioRLError, match=r"unknown reward 'label_acuracy' \(did you mean 'label_accuracy'\?\)"):
        RewardSet([spec("label_acuracy")])
    with pytest.raises(ConfigError, match="could not be imported"):
        RewardSet([spec("tests.reward_plugins:nope")])


def test_kwargs_must_match_the_signature():
    with pytest.raises(ConfigError, match=r"reward 'tests.reward_plugins:strict_reward' has no parameter 'bogus'"):
        RewardSet([spec("tests.reward_plugins:strict_reward", bogus=1)])  # no **kwargs: checked
    RewardSet([spec("think_length", max_length=10)])


def test_missing_columns_are_named_before_training():
    rewards = RewardSet([spec("asr_correctness")])
    with pytest.raises(ConfigError, match=r"reward 'asr_correctness' needs column\(s\) transcript which train.jsonl lacks"):
        rewards.check_columns(["audio", "prompt", "label"], "train.jsonl")


# ------------------------------------------------------------------ aggregation
def test_weighted_sum_logs_each_reward_and_skips_none():
    rewards = RewardSet([spec("label_accuracy", 0.9), spec("cot_format", 0.1), spec("tests.reward_plugins:only_even", 1.0)])
    completions = ["<think>t</think><answer>high</answer>", "low", "<think>t</think><answer>low</answer>"]
    scores = rewards.score(completions, columns={"label": ["high", "high", "high"]})
    assert scores.names == ["label_accuracy", "cot_format", "only_even"]
    assert np.isnan(scores.values[1, 2]) and scores.values[0, 2] == 1.0
    assert scores.total.tolist() == pytest.approx([0.9 + 0.1 + 1.0, 0.0, 0.1 + 1.0])
    assert scores.means() == pytest.approx({"label_accuracy": 1 / 3, "cot_format": 2 / 3, "only_even": 1.0})


def test_sample_with_no_applicable_reward_is_nan():
    scores = RewardSet([spec("tests.reward_plugins:only_even")]).score(["a", "b"])
    assert scores.total[0] == 1.0 and math.isnan(scores.total[1])


def test_raising_reward_names_itself_and_the_sample():
    rewards = RewardSet([spec("tests.reward_plugins:fails_on_boom")])
    with pytest.raises(RewardError, match=r"reward 'fails_on_boom' raised ValueError: .* on sample 2 \(completion 'boom!'\)"):
        rewards.score(["fine", "ok", "boom!", "fine"])


@pytest.mark.parametrize(
    "name,match",
    [
        ("tests.reward_plugins:returns_nan", r"returned nan for sample 1 .*return None"),
        ("tests.reward_plugins:returns_inf", r"returned inf for sample 0"),
        ("tests.reward_plugins:returns_too_few", r"returned 1 values for 3 completions"),
        ("tests.reward_plugins:returns_text", r"returned 'good' for sample 0"),
        ("tests.reward_plugins:returns_scalar", r"returned float; it must return a list of 3 numbers"),
        ("tests.reward_plugins:returns_dict", r"reward 'returns_dict' returned dict; it must return a list of 3 numbers"),
        ("tests.reward_plugins:returns_set", r"returned set; it must return a list"),
        ("tests.reward_plugins:returns_huge", r"reward 'returns_huge' returned 1e\+39 for sample 1 \(completion 'b'\); rewards must lie within"),
        ("tests.reward_plugins:returns_numeric_text", r"returned '1.5' for sample 0"),
        ("tests.reward_plugins:returns_matrix", r"returned an array of shape \(3, 2\)"),
    ],
)
def test_bad_reward_outputs_are_refused(name, match):
    with pytest.raises(RewardError, match=match):
        RewardSet([spec(name)]).score(["a", "b", "c"])


def test_async_rewards_are_awaited():
    assert RewardSet([spec("tests.reward_plugins:async_len")]).score(["ab", "abc"]).total.tolist() == [2.0, 3.0]


def test_rewards_receive_prompts_and_columns():
    scores = RewardSet([spec("tests.reward_plugins:echo_columns")]).score(["x", "y"], prompts=["p1", "p2"], columns={"label": ["a", "b"], "extra": [1, 2]})
    assert scores.total.tolist() == [1.0, 2.0]


MMAU_CHOICES = ["Rain", "Thunder", "A dog barking", "Silence"]


@pytest.mark.parametrize(
    "completion,answer,expected",
    [
        ("<think>loud</think><answer>B</answer>", "Thunder", 1.0),
        ("<answer>(b)</answer>", "Thunder", 1.0),
        ("<answer>Option B: Thunder</answer>", "Thunder", 1.0),
        ("<answer>thunder.</answer>", "B", 1.0),  # the gold answer given as a letter
        ("I hear rumbling. The answer is (B).", "Thunder", 1.0),
        ("First I thought rain. It is a dog barking.", "A dog barking", 1.0),
        ("<answer>Option B: Rain</answer>", "Thunder", 0.0),  # letter and text disagree
        ("<answer>rain or thunder</answer>", "Thunder", 0.0),  # two choices named
        ("<answer>E</answer>", "Thunder", 0.0),  # no such choice
        ("", "Thunder", 0.0),
        ("<answer>A</answer>", "Thunder", 0.0),
    ],
)
def test_mcq_accuracy_mmau_format(completion, answer, expected):
    assert mcq_accuracy([completion], [MMAU_CHOICES], [answer]) == [expected]


def test_mcq_answer_outside_the_choices_is_named():
    rewards = RewardSet([spec("mcq_accuracy")])
    with pytest.raises(RewardError, match=r"mcq_accuracy.*answer 'Hail' is none of the choices.*sample 1"):
        rewards.score(["B", "B"], columns={"choices": [MMAU_CHOICES, MMAU_CHOICES], "answer": ["Thunder", "Hail"]})


# ------------------------------------------------------------------- robustness
completion_text = st.one_of(
    st.text(max_size=300),
    st.lists(st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "high", "low", " ", "。", "\n", "x"]), max_size=40).map("".join),
    st.text(alphabet=st.characters(categories=["Lo", "Nd", "P", "Zs", "So"]), max_size=50),
)


@settings(max_examples=300, deadline=None)
@given(completion_text, st.text(max_size=40))
def test_builtins_never_crash_and_stay_in_range(completion, label):
    for fn, args in (
        (label_accuracy, ([completion], [label])),
        (cot_format, ([completion],)),
        (think_length, ([completion],)),
        (asr_correctness, ([completion], [label])),
        (mcq_accuracy, ([completion], [MMAU_CHOICES], ["Rain"])),
    ):
        (value,) = fn(*args)
        assert 0.0 <= value <= 1.0


def test_very_long_completion():
    text = "<think>" + "word " * 100_000 + "</think><answer>high</answer>"
    assert label_accuracy([text], ["high"]) == [1.0]
    assert think_length([text], max_length=256) == [0.0]


def test_reward_options_are_checked_against_named_parameters_and_declarations():
    """``**_`` takes dataset columns, not options: an option must be a named parameter or declared."""
    with pytest.raises(ConfigError, match=r"reward 'think_length' has no parameter 'max_lenght' \(did you mean 'max_length'\?\)"):
        RewardSet([spec("think_length", max_lenght=5)])
    with pytest.raises(ConfigError, match=r"length_penalty' has no parameter 'scale'.*it takes no options"):
        RewardSet([spec("tests.reward_plugins:length_penalty", scale=2)])
    for name in ("paralinguistic_accuracy", "asr_correctness", "llm_judge", "audiorl.rewards.judge:llm_judge"):
        with pytest.raises(ConfigError, match=r"has no (constructor )?parameter 'bogus'"):
            RewardSet([spec(name, bogus=1)])
    RewardSet([spec("audiorl.rewards.judge:llm_judge", rubric="dialogue")])  # declared: reward_options

    @reward("test_declared_options", options=("scale",))
    def declared(completions, **options):
        return [float(options.get("scale", 1))] * len(completions)

    assert RewardSet([spec("test_declared_options", scale=3)]).score(["a"]).total.tolist() == [3.0]
    with pytest.raises(ConfigError, match=r"has no parameter 'scal' \(did you mean 'scale'\?\)"):
        RewardSet([spec("test_declared_options", scal=3)])


def test_numbers_in_any_flat_sequence_are_accepted():
    scores = RewardSet([spec("tests.reward_plugins:returns_arrays_and_tuples")]).score(["a", "b", "c"])
    assert scores.total.tolist() == [1.0, 0.0, -1e9]
