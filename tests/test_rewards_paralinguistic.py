"""The paralinguistic vocabulary, the attribute parser and the ``paralinguistic_accuracy`` reward."""

from __future__ import annotations

import doctest
import json
from types import SimpleNamespace

import audiorl.rewards.paralinguistic as para
import pytest
import yaml  # PyYAML comes with omegaconf: always installed
from audiorl.common.errors import AudioRLError, ConfigError
from audiorl.rewards import REWARDS, RewardSet
from audiorl.rewards.paralinguistic import (
    VOCABULARY,
    find_labels,
    load_vocabulary,
    paralinguistic_accuracy,
    parse_attributes,
)
from hypothesis import given, settings
from hypothesis import strategies as st

# Step-Audio 2's 11: about the speaker, and about the sounds around the speech.
SPEAKER_DIMENSIONS = {"gender", "age", "timbre", "emotion", "pitch", "rhythm", "speed", "style"}
SCENE_DIMENSIONS = {"scenario", "event", "vocal"}


def test_docstring_examples():
    result = doctest.testmod(para)
    assert result.attempted >= 8 and result.failed == 0


def test_registered_with_all_step_audio_dimensions():
    assert REWARDS.get("paralinguistic_accuracy") is paralinguistic_accuracy
    assert SPEAKER_DIMENSIONS | SCENE_DIMENSIONS <= set(VOCABULARY)
    ordered = {d for d, dim in load_vocabulary().dims.items() if dim.ordered}
    assert ordered == {"age", "pitch", "speed", "volume"}
    assert load_vocabulary().dims["pitch"].labels == ("low", "mid-low", "mid", "mid-high", "high")


def test_every_builtin_synonym_reads_back_as_its_own_label():
    # A synonym shadowed by a longer one, or listed under two labels, would fail here.
    vocab = load_vocabulary()
    for dim, spec in para._BUILTIN_TABLE.items():
        for label, synonyms in spec["labels"].items():
            for word in [label, *synonyms]:
                assert vocab.find(word, [dim]) == {dim: [label]}, (dim, label, word)


@pytest.mark.parametrize(
    "dim,text,label",
    [
        ("gender", "The speaker is a woman", "female"),
        ("gender", "说话人是男性", "male"),
        ("gender", "女声", "female"),
        ("age", "an elderly speaker", "elderly"),
        ("age", "一位中年人", "middle-aged"),
        ("age", "童声", "child"),
        ("age", "a teenage boy", "teenager"),
        ("timbre", "a husky, raspy voice", "husky"),
        ("timbre", "音色有磁性", "magnetic"),
        ("scenario", "recorded in a busy restaurant", "restaurant"),
        ("scenario", "背景在地铁里", "subway"),
        ("event", "a dog barking in the distance", "dog barking"),
        ("event", "有鸣笛声", "car horn"),
        ("emotion", "she sounds cheerful", "happy"),
        ("emotion", "语气很开心", "happy"),
        ("emotion", "情绪悲伤", "sad"),
        ("emotion", "他很生气", "angry"),
        ("emotion", "a sarcastic remark", "sarcastic"),
        ("pitch", "a high-pitched voice", "high"),
        ("pitch", "音调中低音", "mid-low"),
        ("pitch", "Pitch: medium", "mid"),
        ("rhythm", "the rhythm is halting, with many pauses", "halting"),
        ("rhythm", "节奏抑扬顿挫", "expressive"),
        ("speed", "she talks rapidly", "fast"),
        ("speed", "语速偏慢", "medium-slow"),
        ("speed", "speaking at a normal pace", "medium"),
        ("style", "a news announcer", "broadcast"),
        ("style", "用耳语的方式", "whisper"),
        ("vocal", "then he coughs", "cough"),
        ("vocal", "伴随着笑声", "laughter"),
        ("vocal", "一声叹息", "sigh"),
        ("volume", "speaking loudly", "loud"),
        ("volume", "音量很小声", "quiet"),
    ],
)
def test_synonyms_in_english_and_chinese(dim, text, label):
    assert parse_attributes(text).get(dim) == label


def test_multi_attribute_answers():
    en = "A middle-aged man speaks angrily and quickly, with a deep voice; a dog barks outdoors."
    assert parse_attributes(en) == {
        "age": "middle-aged",
        "gender": "male",
        "emotion": "angry",
        "speed": "fast",
        "pitch": "low",
        "event": "dog barking",
        "scenario": "outdoor",
    }
    zh = "这是一位老年女性，音色沙哑，情绪悲伤，语速较慢，音调偏高，背景在厨房，有咳嗽声"
    assert parse_attributes(zh) == {
        "age": "elderly",
        "gender": "female",
        "timbre": "husky",
        "emotion": "sad",
        "speed": "medium-slow",
        "pitch": "mid-high",
        "scenario": "kitchen",
        "vocal": "cough",
    }


@pytest.mark.parametrize(
    "text,expected",
    [
        ("female", {"gender": "female"}),
        ("FEMALE speaker", {"gender": "female"}),
        ("a woman", {"gender": "female"}),  # "man" is not inside "woman"
        ("a man", {"gender": "male"}),
        ("sitting in the saddle", {}),  # "sad" is not inside "saddle"
        ("a ｆａｓｔ talker", {"speed": "fast"}),  # full width
        ("she laughed", {"vocal": "laughter"}),
        ("a slaughter", {}),  # "laughter" is not inside "slaughter"
    ],
)
def test_english_matches_whole_words(text, expected):
    assert parse_attributes(text) == expected


@pytest.mark.parametrize(
    "text,dim,label",
    [
        ("中高音", "pitch", "mid-high"),
        ("高音", "pitch", "high"),
        ("中低音", "pitch", "mid-low"),
        ("低音", "pitch", "low"),
        ("中音", "pitch", "mid"),
        ("语速中速偏快", "speed", "medium-fast"),
        ("中年", "age", "middle-aged"),
    ],
)
def test_chinese_longest_match_first(text, dim, label):
    assert parse_attributes(text) == {dim: label}


def test_chinese_words_containing_level_characters_are_not_levels():
    assert parse_attributes("她很高兴") == {"emotion": "happy"}  # 高兴, not 高
    assert parse_attributes("快乐", ["speed", "emotion"]) == {"emotion": "happy"}  # 快乐, not 快
    assert parse_attributes("在公园中散步") == {"scenario": "park"}  # a lone 中 is not a level


def test_shared_level_words_need_a_cue_or_a_single_dimension():
    assert parse_attributes("音调中等，语速中等") == {"pitch": "mid", "speed": "medium"}
    assert parse_attributes("medium pace, high pitch") == {"speed": "medium", "pitch": "high"}
    assert parse_attributes("the volume is high") == {"volume": "loud"}
    assert parse_attributes("medium") == {}
    assert parse_attributes("high energy") == {}
    assert parse_attributes("medium", ["speed"]) == {"speed": "medium"}
    assert parse_attributes("High.", ["pitch", "gender"]) == {"pitch": "high"}


@pytest.mark.parametrize(
    "text,expected",
    [
        ("She is not angry.", {}),
        ("The speaker isn't angry, just calm", {"emotion": "neutral"}),
        ("not angry but happy", {"emotion": "happy"}),
        ("他不生气", {}),
        ("没有笑声", {}),
        ("非常开心", {"emotion": "happy"}),  # 非常 (very) is not a negation
        ("no laughter or crying, just a cough", {"vocal": "cough"}),
        ("语速不快不慢", {"speed": "medium"}),
        ("neither fast nor slow", {"speed": "medium"}),
        ("音调不高", {}),
    ],
)
def test_negation(text, expected):
    assert parse_attributes(text) == expected


def test_several_labels_of_one_dimension_are_ambiguous():
    assert parse_attributes("male or female") == {"gender": None}
    assert find_labels("male or female") == {"gender": ["male", "female"]}
    assert parse_attributes("a man, a male voice") == {"gender": "male"}  # one label named twice


@pytest.mark.parametrize(
    "text,label",
    [
        ("a 25-year-old", "young adult"),
        ("about 45 years old", "middle-aged"),
        ("in her 50s", "middle-aged"),
        ("aged 70 yo", "elderly"),
        ("25y", "young adult"),
        ("8岁", "child"),
        ("十五岁", "teenager"),
        ("三十多岁", "young adult"),
        ("五十来岁", "middle-aged"),
        ("六十岁", "elderly"),
        ("十几岁", "teenager"),
    ],
)
def test_ages_in_numbers(text, label):
    assert find_labels(text, ["age"]) == {"age": [label]}


# ------------------------------------------------------------------ the reward
def test_ordinal_partial_credit():
    answers = ["fast", "fairly fast", "medium speed", "slightly slow", "slow", "", "medium or fast"]
    gold = ["fast"] * len(answers)
    assert paralinguistic_accuracy(answers, speed=gold) == [1.0, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert paralinguistic_accuracy(answers, speed=gold, tolerance=4) == [1.0, 0.75, 0.5, 0.25, 0.0, 0.0, 0.75]
    assert paralinguistic_accuracy(answers, speed=gold, ordinal_credit="none") == [1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.5]
    assert paralinguistic_accuracy(["中年"], age=["老年"]) == [0.5]


def test_unordered_credit_is_shared_among_named_labels():
    assert paralinguistic_accuracy(["laughter"], vocal=["笑声"]) == [1.0]
    assert paralinguistic_accuracy(["laughter and a cough"], vocal=["laughter"]) == [0.5]
    assert paralinguistic_accuracy(["crying"], vocal=["laughter"]) == [0.0]
    assert paralinguistic_accuracy(["a warm, magnetic voice"], timbre=[["warm", "磁性"]]) == [1.0]
    assert paralinguistic_accuracy(["male or female"], gender=["male"]) == [0.5]


def test_score_is_the_mean_over_gold_dimensions():
    out = paralinguistic_accuracy(
        ["A young woman, happy, speaking fast"], gender=["男"], age=["青年"], emotion=["开心"], speed=["快"]
    )
    assert out == [0.75]


def test_gold_from_attributes_dict_json_string_or_columns():
    completions = ["<answer>女性，青年</answer>", "<answer>女性，青年</answer>", "<answer>女性，青年</answer>"]
    attributes = [
        {"gender": "female", "age": 25},
        json.dumps({"Gender": "女", "age": "老年"}, ensure_ascii=False),
        None,
    ]
    gender = ["male", "male", "female"]  # read only for the row without attributes
    age = ["child", "child", "20s"]
    assert paralinguistic_accuracy(completions, attributes=attributes, gender=gender, age=age) == [1.0, 0.5, 1.0]


def test_rows_without_gold_are_not_applicable():
    assert paralinguistic_accuracy(["male"], attributes=[{}]) == [None]
    assert paralinguistic_accuracy(["male"], attributes=[None]) == [None]
    assert paralinguistic_accuracy(["male"], gender=[None], age=[float("nan")]) == [None]
    assert paralinguistic_accuracy(["male"]) == [None]


def test_dimensions_restricts_what_is_scored():
    attributes = [{"gender": "male", "emotion": "sad"}]
    assert paralinguistic_accuracy(["a happy man"], attributes=attributes) == [0.5]
    assert paralinguistic_accuracy(["a happy man"], attributes=attributes, dimensions=["gender"]) == [1.0]
    assert paralinguistic_accuracy(["a happy man"], attributes=attributes, dimensions="emotion") == [0.0]
    assert paralinguistic_accuracy(["a happy man"], attributes=attributes, dimensions=["pitch"]) == [None]


def test_unknown_gold_label_error_names_reward_row_and_dimension():
    with pytest.raises(AudioRLError) as err:
        paralinguistic_accuracy(["x", "y"], attributes=[{"gender": "male"}, {"gender": "male", "emotion": "wistful"}])
    message = str(err.value)
    for part in ("paralinguistic_accuracy", "row 1", "'emotion'", "'wistful'", "happy", "sarcastic", "unknown_gold"):
        assert part in message
    assert paralinguistic_accuracy(
        ["a man"], attributes=[{"gender": "male", "emotion": "wistful"}], unknown_gold="skip"
    ) == [1.0]
    assert paralinguistic_accuracy(["a man"], emotion=["wistful"], unknown_gold="skip") == [None]


def test_other_gold_errors():
    with pytest.raises(
        AudioRLError, match=r"row 0: 'attributes' names the unknown dimension 'gendre' \(did you mean 'gender'\?\)"
    ):
        paralinguistic_accuracy(["x"], attributes=[{"gendre": "male"}])
    assert paralinguistic_accuracy(["a man"], attributes=[{"gendre": "x", "gender": "male"}], unknown_gold="skip") == [
        1.0
    ]
    with pytest.raises(AudioRLError, match=r"row 0, dimension 'speed': .* names several levels \(slow, fast\)"):
        paralinguistic_accuracy(["x"], speed=["slow to fast"])
    with pytest.raises(AudioRLError, match=r"row 0: 'attributes' is not valid JSON"):
        paralinguistic_accuracy(["x"], attributes=["{gender: male"])
    with pytest.raises(AudioRLError, match=r"row 0: 'attributes' must be a dict"):
        paralinguistic_accuracy(["x"], attributes=[["male"]])
    with pytest.raises(AudioRLError, match=r"column 'gender' has 2 values for 1 completions"):
        paralinguistic_accuracy(["x"], gender=["male", "female"])


@pytest.mark.parametrize(
    "kwargs,pattern",
    [
        ({"ordinal_credit": "quadratic"}, r"ordinal_credit is 'quadratic'; choose one of: linear, none"),
        ({"tolerance": 0}, r"tolerance must be a positive number"),
        ({"unknown_gold": "ignore"}, r"unknown_gold is 'ignore'; choose one of: error, skip"),
        ({"dimensions": ["pich"]}, r"unknown dimension 'pich' \(did you mean 'pitch'\?\)"),
        ({"vocabulary": 3}, r"vocabulary must be a dict or the path"),
        ({"vocabulary": "/nonexistent/labels.yaml"}, r"vocabulary file '/nonexistent/labels.yaml' does not exist"),
    ],
)
def test_bad_kwargs(kwargs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        paralinguistic_accuracy(["x"], gender=["male"], **kwargs)


def test_the_thinking_is_never_scored():
    gold = {"gender": ["female"]}
    assert paralinguistic_accuracy(["<think>a woman</think>a man"], **gold) == [0.0]
    assert paralinguistic_accuracy(["<think>a woman"], **gold) == [0.0]  # unclosed: no answer yet
    assert paralinguistic_accuracy(["<think>a man</think><answer>a woman</answer>"], **gold) == [1.0]
    assert paralinguistic_accuracy(["a woman, I think. <answer>male</answer>"], **gold) == [0.0]  # the tag wins
    assert paralinguistic_accuracy([[{"role": "assistant", "content": "<answer>女</answer>"}]], **gold) == [1.0]


# ------------------------------------------------------------------ extending the vocabulary
EXTRA = {
    "emotion": {"labels": {"bored": ["无聊", "uninterested"], "happy": "chuffed"}},
    "accent": {"cues": ["accent", "口音"], "labels": {"british": ["英式", "english"], "american": ["美式", "us"]}},
}


def test_vocabulary_extension_from_a_dict():
    answers = ["she sounds uninterested, with a British accent", "chuffed, 美式口音"]
    gold = [{"emotion": "无聊", "accent": "british"}, {"emotion": "happy", "accent": "british"}]
    assert paralinguistic_accuracy(answers, attributes=gold, vocabulary=EXTRA) == [1.0, 0.5]
    assert parse_attributes("a bored Englishman", vocabulary=EXTRA) == {"emotion": "bored"}  # whole words only
    assert "bored" not in load_vocabulary().dims["emotion"].labels  # the built-in vocabulary is untouched
    with pytest.raises(AudioRLError, match="unknown dimension 'accent'"):
        paralinguistic_accuracy(answers, attributes=gold)


def test_vocabulary_extension_from_json_and_yaml_files(tmp_path):
    (tmp_path / "labels.json").write_text(json.dumps(EXTRA, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "labels.yaml").write_text(yaml.safe_dump(EXTRA, allow_unicode=True), encoding="utf-8")
    for name in ("labels.json", "labels.yaml"):
        path = str(tmp_path / name)
        assert paralinguistic_accuracy(
            ["无聊，英式口音"], attributes=[{"emotion": "bored", "accent": "english"}], vocabulary=path
        ) == [1.0]
    (tmp_path / "labels.txt").write_text("{}")
    with pytest.raises(ConfigError, match=r"must be a \.json, \.yaml or \.yml file"):
        load_vocabulary(str(tmp_path / "labels.txt"))
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"broken\.json': could not be read"):
        load_vocabulary(str(tmp_path / "broken.json"))


def test_ordered_dimensions_are_replaced_whole():
    with pytest.raises(
        ConfigError, match=r"dimension 'speed': is ordered \(slow < .* < fast\); to add the level 'very fast'"
    ):
        load_vocabulary({"speed": {"labels": {"very fast": ["breakneck"]}}})
    three = {"speed": {"replace": True, "ordered": True, "labels": {"slow": "慢", "medium": "中速", "fast": "快"}}}
    assert load_vocabulary(three).dims["speed"].labels == ("slow", "medium", "fast")
    assert paralinguistic_accuracy(["慢"], speed=["快"], vocabulary=three) == [0.0]
    assert paralinguistic_accuracy(["中速"], speed=["快"], vocabulary=three) == [0.5]
    # a synonym added to an existing level is fine
    assert paralinguistic_accuracy(
        ["breakneck"], speed=["fast"], vocabulary={"speed": {"labels": {"fast": ["breakneck"]}}}
    ) == [1.0]


@pytest.mark.parametrize(
    "extra,pattern",
    [
        ({"emotion": ["happy"]}, r"dimension 'emotion': must be a mapping with 'labels'"),
        ({"emotion": {"label": {"x": []}}}, r"unknown key 'label' \(did you mean 'labels'\?\)"),
        ({"emotion": {"labels": ["bored"]}}, r"'labels' must map each label to its synonyms"),
        (
            {"emotion": {"labels": {"bored": 3}}},
            r"dimension 'emotion', synonyms of label 'bored' must be a list of strings",
        ),
        ({"emotion": {"labels": {"bored": ["sad"]}}}, r"'sad' is a synonym of both 'sad' and 'bored'"),
        ({"emotion": {"labels": {"bored": ["so, so"]}}}, r"synonym 'so, so' is empty or holds clause punctuation"),
        ({"accent": {"cues": ["accent"]}}, r"dimension 'accent': a new \(or replaced\) dimension needs 'labels'"),
        ({"pitch": {"ordered": False}}, r"'ordered' cannot change without replace: true"),
        ({"pitch": {"replace": "yes", "labels": {"a": []}}}, r"'replace' must be true or false"),
        (["emotion"], r"must map dimension names"),
    ],
)
def test_vocabulary_validation_errors(extra, pattern):
    with pytest.raises(ConfigError, match=pattern) as err:
        load_vocabulary(extra) if isinstance(extra, dict) else para._table(extra, "paralinguistic_accuracy: vocabulary")
    assert "paralinguistic_accuracy: vocabulary" in str(err.value)


def test_through_the_reward_set_with_yaml_style_kwargs():
    spec = SimpleNamespace(
        name="paralinguistic_accuracy",
        weight=2.0,
        alias=None,
        kwargs={"dimensions": ["gender", "pitch"], "ordinal_credit": "linear"},
    )
    rewards = RewardSet([spec])
    scores = rewards.score(
        ["<think>hm</think><answer>male, mid-high pitch</answer>", "no gold here"],
        columns={"attributes": ['{"gender": "男", "pitch": "高音"}', None], "label": ["x", "y"]},
    )
    assert scores.values[0].tolist() == [0.75]
    assert scores.total[0] == 1.5
    rewards.close()


# ------------------------------------------------------------------ robustness
_TAGS = st.sampled_from(["<think>", "</think>", "<answer>", "</answer>", "，", "。", "not ", "不", "-", "'", "\n"])
_WORDS = st.sampled_from(
    ["male", "女", "中高音", "high", "fast", "语速", "pitch", "25 years old", "三十多岁", "开心", "laughter"]
)
_TEXT = st.lists(st.one_of(st.text(max_size=20), _TAGS, _WORDS), max_size=30).map("".join)
_DIMS = sorted(VOCABULARY)


def _gold(data) -> dict:
    """Known labels of random dimensions, and now and then free text that may match none (skipped)."""
    dims = data.draw(st.lists(st.sampled_from(_DIMS), unique=True, max_size=5))
    labels = load_vocabulary().dims
    return {d: data.draw(st.one_of(st.sampled_from(labels[d].labels), st.text(max_size=8))) for d in dims}


@settings(max_examples=200, deadline=None)
@given(completions=st.lists(_TEXT, min_size=1, max_size=4), data=st.data())
def test_never_crashes_and_stays_in_range(completions, data):
    golds = [_gold(data) for _ in completions]
    for kwargs in ({}, {"ordinal_credit": "none"}, {"tolerance": 1}):
        out = paralinguistic_accuracy(completions, attributes=golds, unknown_gold="skip", **kwargs)
        assert len(out) == len(completions)
        assert all(v is None or 0.0 <= v <= 1.0 for v in out)
    for text in completions:
        parsed = parse_attributes(text)
        vocab = load_vocabulary()
        assert all(label is None or label in vocab.dims[dim].labels for dim, label in parsed.items())
