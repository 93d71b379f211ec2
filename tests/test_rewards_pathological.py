"""Built-in rewards are total and linear-time on any completion: 1 MB of unclosed tags, long runs of
spaces, brackets or Chinese numerals must score (or give None) in seconds, never raise or take minutes.

Each case had a quadratic (or worse) regex or an unbounded integer before: minutes per MB, or
``ValueError: Exceeds the limit (4300 digits)``. The time bound is generous (a linear pass over 1 MB
takes well under a second per reward even on a loaded 2-core machine): it fails only on super-linear
behaviour, which takes minutes here.
"""

from __future__ import annotations

import math
import re
import time

import pytest
from audiorl.rewards.asr import asr_correctness, asr_edit_distance, normalize_transcript
from audiorl.rewards.builtin import cot_format, label_accuracy, mcq_accuracy, think_length
from audiorl.rewards.judge import parse_score, parse_verdict
from audiorl.rewards.paralinguistic import paralinguistic_accuracy
from audiorl.rewards.text import answer_span, tagged_blocks, thinking
from hypothesis import given, settings
from hypothesis import strategies as st

MB = 1 << 20
BUDGET_S = 30.0  # per reward call on 1 MB; the quadratic cases took minutes


def _repeat(unit: str) -> str:
    return unit * (MB // len(unit))


PATHOLOGICAL = {
    "unclosed_answer": _repeat("<answer>"),
    "unclosed_think": _repeat("<think>"),
    "think_then_unclosed_answers": "<think>t</think>" + _repeat("<answer>x"),
    "closed_pairs": _repeat("<think>a</think><answer>b</answer>"),
    "spaces_in_parens": "( " + " " * MB + "!",
    "open_brackets": _repeat("<"),
    "open_parens": _repeat("("),
    "mixed_brackets": _repeat("[ (<"),
    "zh_numeral_chain": _repeat("一万亿"),
    "zh_digits": _repeat("一二三"),
    "words": _repeat("high low "),
    "letters": _repeat("(a) "),
    "newlines": _repeat("\n \t"),
}

REWARDS = {
    "label_accuracy": lambda c: label_accuracy(c, ["high"] * len(c)),
    "cot_format": lambda c: cot_format(c),
    "think_length": lambda c: think_length(c, max_length=10),
    "mcq_accuracy": lambda c: mcq_accuracy(c, [["high", "low"]] * len(c), ["B"] * len(c)),
    "asr_correctness_en": lambda c: asr_correctness(c, ["a high tone"] * len(c), "en"),
    "asr_correctness_zh": lambda c: asr_correctness(c, ["一百二十三"] * len(c), "zh"),
    "asr_edit_distance_auto": lambda c: asr_edit_distance(c, ["high"] * len(c), normalized=True),
    "paralinguistic_accuracy": lambda c: paralinguistic_accuracy(c, pitch=["high"] * len(c), gender=["male"] * len(c)),
    "parse_score": lambda c: [parse_score(x) for x in c],
    "parse_verdict": lambda c: [parse_verdict(x) for x in c],
}


@pytest.mark.parametrize("reward", REWARDS, ids=str)
def test_each_builtin_is_total_and_linear_on_pathological_text(reward):
    fn = REWARDS[reward]
    fn(["warm up"])  # first-call costs (the English normaliser's import) are not the text's
    slowest = (0.0, "")
    for name, text in PATHOLOGICAL.items():
        start = time.perf_counter()
        out = fn([text])
        elapsed = time.perf_counter() - start
        slowest = max(slowest, (elapsed, name))
        assert len(out) == 1
        value = out[0]
        assert value is None or isinstance(value, str) or math.isfinite(value), (name, value)
    assert slowest[0] < BUDGET_S, f"{reward} took {slowest[0]:.1f} s on 1 MB of {slowest[1]}: super-linear"


def test_parsers_keep_their_answers_on_pathological_text():
    # the linear scanners give what the lazy regexes gave
    assert thinking("<think>a</think><think>b</think>") == "a"
    assert thinking(_repeat("<think>")) is None
    assert thinking("x<think><think>in</think>") == "<think>in"
    assert answer_span("<think>t</think><answer>1</answer> <answer>2</answer><answer>3") == ("2", True)
    assert answer_span(_repeat("<answer>"))[1] is False
    assert label_accuracy(["<answer>" * 1000 + "</answer><answer>high</answer>"], ["high"]) == [1.0]
    assert mcq_accuracy(["( " + " " * 1000 + "b"], [["x", "y"]], ["y"]) == [1.0]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(["<answer>", "</answer>", "<think>", "</think>", "a", " "]), max_size=30).map("".join))
def test_tag_scanners_agree_with_the_lazy_regexes(text):
    assert tagged_blocks(text, "<answer>", "</answer>") == re.findall(r"<answer>(.*?)</answer>", text, re.DOTALL)
    match = re.search(r"<think>(.*?)</think>", text, re.DOTALL)
    assert thinking(text) == (match.group(1) if match else None)


def test_long_chinese_numeral_chains_are_left_as_written():
    chain = "一万亿" * 2000  # would be a number of 16000+ digits
    assert normalize_transcript(chain, "zh") == chain
    assert normalize_transcript("一万亿", "zh") == "1000000000000"
    assert asr_correctness([chain], [chain], "zh") == [1.0]
