"""ASR normalisation, WER/CER/MER and the ASR rewards."""

from __future__ import annotations

import doctest

import audiorl.rewards.asr as asr
import pytest
from audiorl.rewards import REWARDS, resolve_reward
from audiorl.rewards.asr import (
    asr_correctness,
    asr_edit_distance,
    corpus_error_rate,
    error_rate,
    normalize_transcript,
)
from hypothesis import given, settings
from hypothesis import strategies as st


def test_docstring_examples():
    assert doctest.testmod(asr).failed == 0


def test_rewards_are_registered():
    assert {"asr_correctness", "asr_edit_distance"} <= set(REWARDS.names())
    assert resolve_reward("asr_correctness") is asr_correctness
    assert resolve_reward("asr_edit_distance") is asr_edit_distance


# ------------------------------------------------------------------------------------ normalisation
@pytest.mark.parametrize(
    "text, expected",
    [
        ("Mr. Smith can't go.", "mister smith can not go"),
        ("I've got twenty five apples", "i have got 25 apples"),
        ("It's 1,000 dollars!", "it is $1000"),
        ("HELLO, World... (laughs)", "hello world"),
        ("Wait... what?!", "wait what"),
        ("The colour of the theatre", "the color of the theater"),  # the vendored spelling list
        ("um, we're gonna win", "we are going to win"),
        ("ＴＨＥ ＣＡＴ", "the cat"),
    ],
)
def test_english_normalisation(text, expected):
    assert normalize_transcript(text, "en") == expected


def test_english_variants_compare_equal():
    assert error_rate("Twenty-five percent of the colour is gone...", "25% of the color is gone", "en-GB") == 0.0


@pytest.mark.parametrize(
    "text, expected",
    [
        ("ＡＢＣ１２３，。", "abc123"),
        ("今天 天气， 很好！ Hello World", "今天天气很好hello world"),
        ("一百二十三", "123"),
        ("一二三", "123"),
        ("两千零五", "2005"),
        ("两千五", "2500"),
        ("三点五", "3.5"),
        ("一千二百三十四万五千六百七十八", "12345678"),
        ("一亿二千万", "120000000"),
        ("二零二四年三月", "2024年3月"),
        ("万一， 千万", "万1千万"),  # 万一 "in case" and 千万 "by all means" are words, not numbers
        ("三四百个两个", "三四百个两个"),  # an estimate and 两 "a couple" stay as written
        ("3.5元， 不是 3. 5", "3.5元不是3 5"),
    ],
)
def test_chinese_normalisation(text, expected):
    assert normalize_transcript(text, "zh") == expected


def test_chinese_numbers_compare_equal_to_digits():
    assert normalize_transcript("一百二十三", "zh") == normalize_transcript("123", "zh")
    assert error_rate("我有一百二十三个苹果。", "我有 123 个苹果") == 0.0


def test_japanese_and_generic_normalisation():
    assert normalize_transcript("今日は　いい天気ですね。二十歳！", "ja") == "今日はいい天気ですね二十歳"
    assert normalize_transcript("Ça va?  Très BIEN!", "fr") == "ça va très bien"


def test_language_codes_and_detection():
    for code in ("en", "en-US", "EN_gb", "eng"):
        assert normalize_transcript("twenty five", code) == "25"
    for code in ("zh", "zh-TW", "cmn", "yue"):
        assert normalize_transcript("一百", code) == "100"
    assert normalize_transcript("一百", "ja") == "一百"
    assert normalize_transcript("一百", None) == "100"  # CJK without kana: Chinese
    assert normalize_transcript("一百です", None) == "一百です"  # kana: Japanese
    assert normalize_transcript("Twenty five!", None) == "twenty five"  # no language: generic, no number rules


# ------------------------------------------------------------------------------------ error rates
def counts(ref, hyp, **kw):
    c = corpus_error_rate([ref], [hyp], **kw)
    return c.substitutions, c.deletions, c.insertions, c.reference_units, c.rate


def test_wer_by_hand():
    assert counts("the cat sat on the mat", "the cat sat on mat") == (0, 1, 0, 6, 1 / 6)
    assert counts("the cat sat on the mat", "a cat sat on the mat today") == (1, 0, 1, 6, 2 / 6)
    assert error_rate("a b", "c d e f") == 2.0  # edits / reference words, not clipped


def test_cer_by_hand():
    assert counts("今天天气很好", "今天天很好啊") == (0, 1, 1, 6, 2 / 6)
    assert counts("abc", "abd", language="en", metric="cer") == (1, 0, 0, 3, 1 / 3)


def test_mixed_error_rate_counts_cjk_characters_and_english_words():
    ref, hyp = "我爱 Python 编程", "我爱 Java 编程"
    assert counts(ref, hyp, metric="mer") == (1, 0, 0, 5, 1 / 5)  # 我 爱 python 编 程
    assert error_rate(ref, hyp, metric="cer") == pytest.approx(6 / 10)  # python -> java is 6 letters
    assert error_rate(ref, hyp, metric="wer") == 1.0  # one "word" once CJK spaces go


def test_empty_reference_and_hypothesis():
    assert error_rate("", "") == 0.0
    assert error_rate("", "extra words") == 1.0
    assert error_rate("。", "") == 0.0  # empty once normalised
    assert counts("two words", "") == (0, 2, 0, 2, 1.0)
    assert counts("", "x y", metric="wer") == (0, 0, 2, 0, 1.0)


def test_corpus_rate_is_total_edits_over_total_units_not_a_mean():
    refs, hyps = ["the cat sat", "hello"], ["the cat sat down", "yellow"]
    per_sample = [error_rate(r, h) for r, h in zip(refs, hyps)]
    assert per_sample == [1 / 3, 1.0]
    result = corpus_error_rate(refs, hyps)
    assert (result.edits, result.reference_units, result.utterances) == (2, 4, 2)
    assert result.rate == 0.5 != sum(per_sample) / 2


def test_corpus_metric_follows_the_languages():
    assert corpus_error_rate(["a b"], ["a b"]).metric == "wer"
    assert corpus_error_rate(["你好"], ["你好"]).metric == "cer"
    mixed = corpus_error_rate(["你好世界", "good morning"], ["你好", "good evening"], language=["zh", "en"])
    assert mixed.metric == "mer"
    assert (mixed.deletions, mixed.substitutions, mixed.reference_units, mixed.rate) == (2, 1, 6, 0.5)
    empty = corpus_error_rate([], [])
    assert (empty.utterances, empty.rate) == (0, 0.0)


def test_corpus_errors_name_the_fault():
    with pytest.raises(ValueError, match="2 references but 1 hypotheses"):
        corpus_error_rate(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="reference 1 must be text, got NoneType"):
        corpus_error_rate(["a", None], ["a", "b"])
    with pytest.raises(ValueError, match="metric must be one of auto, wer, cer, mer, got 'bleu'"):
        corpus_error_rate(["a"], ["a"], metric="bleu")


# ------------------------------------------------------------------------------------ rewards
def test_asr_correctness_values():
    ref = ["the cat sat on the mat"]
    assert asr_correctness(["<think>listen</think><answer>The cat sat on the mat.</answer>"], ref) == [1.0]
    assert asr_correctness(["<think>hm</think>the cat sat on a mat"], ref) == pytest.approx([1 - 1 / 6])
    assert asr_correctness(["completely different words here now ok and more"], ref) == [0.0]  # clipped
    assert asr_correctness(["今天天气不好"], ["今天天气很好"]) == pytest.approx([1 - 1 / 6])
    assert asr_correctness(["twenty-five dollars"], ["$25"], language="en") == [1.0]  # one code for every row
    assert asr_correctness(["我爱 java"], ["我爱python"], metric="mer") == pytest.approx([2 / 3])


def test_exact_bonus_needs_equal_normalised_text():
    refs = ["Hello, world!", "hello world", "a lot"]
    hyps = ["hello world", "hello there", "alot"]
    assert asr_correctness(hyps, refs, exact_bonus=0.5) == pytest.approx([1.5, 0.5, 0.0])
    # CER ignores spaces, so "alot" has no errors, yet it is not the reference: no bonus
    assert asr_correctness(hyps, refs, metric="cer", exact_bonus=0.5)[2] == 1.0


def test_asr_edit_distance_values():
    refs = ["the cat sat", "今天天气很好", "x"]
    hyps = ["the cat sat down", "今天天气", "x"]
    assert asr_edit_distance(hyps, refs) == [-1.0, -2.0, 0.0]
    assert asr_edit_distance(hyps, refs, normalized=True) == pytest.approx([-1 / 4, -2 / 6, 0.0])
    assert asr_edit_distance(["今天天气"], ["今天天气很好"], metric="wer") == [-1.0]
    assert asr_edit_distance([""], [""], normalized=True) == [0.0]


@pytest.mark.parametrize("fn", [asr_correctness, asr_edit_distance])
def test_bad_rows_are_named(fn):
    name = fn.__name__
    with pytest.raises(ValueError, match=rf"{name}: row 1 has no transcript"):
        fn(["a", "b"], ["a", None])
    with pytest.raises(ValueError, match=rf"{name}: row 0 has a int transcript"):
        fn(["a"], [3])
    with pytest.raises(ValueError, match=rf"{name}: 1 transcripts for 2 completions"):
        fn(["a", "b"], ["a"])
    with pytest.raises(ValueError, match=rf"{name}: row 1 has language 7"):
        fn(["a", "b"], ["a", "b"], language=["en", 7])
    with pytest.raises(ValueError, match=rf"{name}: metric must be one of"):
        fn(["a"], ["a"], metric="wrong")


def test_exact_bonus_is_checked():
    with pytest.raises(ValueError, match="asr_correctness: exact_bonus must be a finite number >= 0"):
        asr_correctness(["a"], ["a"], exact_bonus=-1)


# ------------------------------------------------------------------------------------ robustness
completion_text = st.one_of(
    st.text(max_size=300),
    st.lists(
        st.sampled_from(
            [
                "<think>",
                "</think>",
                "<answer>",
                "</answer>",
                "twenty",
                "five",
                "一",
                "百",
                "点",
                "两",
                "万",
                "$",
                "%",
                "1,0",
                ".",
                "'s",
                "mr.",
                " ",
                "。",
                "\n",
                "ｘ",
            ]
        ),
        max_size=40,
    ).map("".join),
    st.text(alphabet=st.characters(categories=["Lo", "Nd", "Nl", "No", "P", "Zs", "So", "Sc", "Mn"]), max_size=60),
)


@settings(max_examples=200, deadline=None)
@given(
    completion_text,
    st.text(max_size=40),
    st.sampled_from([None, "en", "zh", "ja", "de"]),
    st.sampled_from(["auto", "wer", "cer", "mer"]),
)
def test_rewards_never_crash_and_stay_in_range(completion, transcript, language, metric):
    (value,) = asr_correctness([completion], [transcript], language, metric=metric, exact_bonus=0.25)
    assert 0.0 <= value <= 1.25
    (distance,) = asr_edit_distance([completion], [transcript], language, metric=metric)
    assert distance <= 0.0
    (scaled,) = asr_edit_distance([completion], [transcript], language, metric=metric, normalized=True)
    assert -1.0 <= scaled <= 0.0


def test_very_long_completion():
    text = "<think>" + "word " * 100_000 + "</think><answer>" + "the cat sat " * 1000 + "</answer>"
    assert asr_correctness([text], ["the cat sat"], language="en") == [0.0]
    assert asr_edit_distance([text], ["the cat sat"]) == [-2997.0]


def test_evaluation_reports_the_corpus_rate_of_each_asr_reward():
    from types import SimpleNamespace

    from audiorl.rewards import RewardSet
    from audiorl.rl.evaluate import asr_corpus_rates

    def spec(name, **kwargs):
        return SimpleNamespace(name=name, weight=1.0, kwargs=kwargs, alias=None)

    rewards = RewardSet([spec("asr_correctness"), spec("cot_format")])
    texts = ["<think>x</think><answer>the cat sat</answer>", "<answer>hello there</answer>"]
    columns = {"transcript": ["the cat sat on the mat", "hi"]}
    scores = rewards.score(texts, columns=columns)
    rates = asr_corpus_rates(rewards, scores, texts, columns)
    assert rates == {"eval/asr_correctness/corpus_wer": pytest.approx(5 / 7)}  # (3 deletions + 2 edits) / 7 words
    assert scores.means()["asr_correctness"] == pytest.approx(0.25)  # the mean of per-sample rewards differs
