"""Reward-model training (``audiorl train-rm``, TRL's RewardTrainer) and the ``preference_model`` reward.

A tiny random reward model is built offline and trained on a synthesised preference set whose chosen
answer names the tone the prompt states: a random model is right about half the time, a trained one
must read the prompt.
"""

from __future__ import annotations

import doctest
import json
import math
import os
from types import SimpleNamespace

import audiorl.rewards.preference as preference
import numpy as np
import pytest
from audiorl.common.errors import ConfigError, DataError
from audiorl.rewards.preference import preference_model, reset_running_stats, strip_audio_placeholders
from audiorl.rl.reward_model import (
    load_pair_splits,
    load_rm_config,
    read_preferences,
    split_by_prompt,
    synthesize_preferences,
    train_reward_model,
)
from hypothesis import given, settings
from hypothesis import strategies as st

RECIPE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes", "train_rm.yaml")


def write_jsonl(path, rows) -> str:
    with open(path, "w") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return str(path)


@pytest.fixture(scope="module")
def tiny_rm(tmp_path_factory) -> str:
    from audiorl.model.tiny_rm import build_tiny_reward_model

    return build_tiny_reward_model(str(tmp_path_factory.mktemp("tiny_rm") / "model"), seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_rm):
    """The real RewardTrainer on 192 synthetic pairs for 60 steps (full fine-tuning): (config, metrics)."""
    root = tmp_path_factory.mktemp("rm_run")
    data = synthesize_preferences(str(root / "pairs.jsonl"), "pairs", n_prompts=256, seed=0)
    config = load_rm_config(
        None,
        [
            f"output_dir={root / 'run'}",
            f"model.path={tiny_rm}",
            "model.device=cpu",
            f"data.train={data}",
            "data.eval_fraction=0.25",
            "train.max_steps=60",
            "train.batch_size=16",
            "train.learning_rate=1e-4",
            "train.lr_scheduler=constant",
            "train.logging_steps=20",
        ],
    )
    return config, train_reward_model(config)


def heldout_pairs(config) -> list[dict]:
    return load_pair_splits(config)[1]


# ------------------------------------------------------------------ training
def test_training_raises_heldout_pairwise_accuracy(trained):
    config, metrics = trained
    before, after = metrics["eval_pairwise_accuracy_before"], metrics["eval_pairwise_accuracy_after"]
    print(f"held-out pairwise accuracy {before:.3f} -> {after:.3f} on {metrics['eval_pairs']} pairs")
    assert metrics["eval_pairs"] == 64 and metrics["train_pairs"] == 192 and metrics["steps"] == 60
    assert 0.3 <= before <= 0.7  # chance: the answer word alone says nothing
    assert after >= 0.9
    with open(os.path.join(config.output_dir, "metrics.json")) as f:
        assert json.load(f)["eval_pairwise_accuracy_after"] == after


def test_checkpoint_loads_as_a_sequence_classifier_with_nothing_half_written(trained):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    config, metrics = trained
    model = AutoModelForSequenceClassification.from_pretrained(metrics["model"])
    tokenizer = AutoTokenizer.from_pretrained(metrics["model"])
    assert model.config.num_labels == 1 and model.config.pad_token_id == tokenizer.pad_token_id is not None
    with open(os.path.join(metrics["model"], preference.META_FILE)) as f:
        assert json.load(f)["template"] == "chat"
    leftovers = [n for n in os.listdir(config.output_dir) if ".tmp-" in n or ".old-" in n]
    assert leftovers == []


def test_reward_ranks_heldout_chosen_above_rejected(trained):
    config, metrics = trained
    pairs = heldout_pairs(config)
    prompts = [p["prompt"] for p in pairs]
    chosen = preference_model([p["chosen"] for p in pairs], prompts, model=metrics["model"])
    rejected = preference_model([p["rejected"] for p in pairs], prompts, model=metrics["model"])
    wins = np.array(chosen) > np.array(rejected)
    assert wins.mean() >= 0.9
    # the reward renders and scores exactly as training measured
    assert wins.mean() == pytest.approx(metrics["eval_pairwise_accuracy_after"])


def test_reward_works_through_a_reward_set(trained):
    from audiorl.rewards import RewardSet

    config, metrics = trained
    pair = heldout_pairs(config)[0]
    spec = SimpleNamespace(name="preference_model", weight=1.0, kwargs={"model": metrics["model"]}, alias=None)
    scores = RewardSet([spec]).score([pair["chosen"], pair["rejected"]], [pair["prompt"]] * 2)
    assert scores.total[0] > scores.total[1]


def test_audio_placeholders_are_stripped_before_scoring(trained):
    config, metrics = trained
    pair = heldout_pairs(config)[0]
    completions = [pair["chosen"], pair["rejected"]]
    plain = preference_model(completions, [pair["prompt"]] * 2, model=metrics["model"])
    with_audio = f"Audio 1: <|audio_bos|><|AUDIO|><|AUDIO|><|audio_eos|>\n{pair['prompt']} <|AUDIO|>"
    assert preference_model(completions, [with_audio] * 2, model=metrics["model"]) == pytest.approx(plain, abs=1e-6)
    assert strip_audio_placeholders(with_audio).strip() == pair["prompt"]


# ------------------------------------------------------------ the CLI entry
def test_cli_trains_the_recipe_with_lora(tmp_path, capsys):
    from audiorl.rl.cli import main
    from safetensors import safe_open

    out = tmp_path / "cli"
    overrides = [f"output_dir={out}", "train.max_steps=6", "train.logging_steps=3", "data.synthesize.n_prompts=12", "model.device=cpu"]
    assert main(["train-rm", RECIPE, *overrides]) == 0
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    with open(out / "metrics.json") as f:
        metrics = json.load(f)
    assert metrics["lora"] and metrics["steps"] == 6 and metrics["data"]["train"]["format"] == "ratings"
    with safe_open(os.path.join(metrics["model"], "model.safetensors"), "pt") as f:
        keys = list(f.keys())
        trained_head = f.get_tensor("score.weight")
    assert "score.weight" in keys and not [k for k in keys if "lora" in k or "modules_to_save" in k]  # merged
    with safe_open(str(out / "tiny_rm" / "model.safetensors"), "pt") as f:
        assert not np.allclose(f.get_tensor("score.weight").numpy(), trained_head.numpy())  # the head trained
    scores = preference_model(["<answer>high</answer>", "low"], ["The tone is high."] * 2, model=metrics["model"])
    assert all(math.isfinite(s) for s in scores)


def test_cli_reports_a_bad_override(capsys):
    from audiorl.rl.cli import main

    assert main(["train-rm", RECIPE, "train.max_step=3"]) == 2
    assert "unknown key 'train.max_step' (did you mean 'max_steps'?)" in capsys.readouterr().err


def test_recipe_validates():
    config = load_rm_config(RECIPE, ["output_dir=/tmp/never"])
    assert config.model.path == "/tmp/never/tiny_rm" and config.lora.enabled and config.data.synthesize.kind == "ratings"


# --------------------------------------------------------------------- data
RATED = [
    {"prompt": "a", "completion": "best", "rating": 5},
    {"prompt": "a", "completion": "mid", "rating": 3},
    {"prompt": "a", "completion": "mid too", "rating": 3},
    {"prompt": "a", "completion": "worst", "rating": 1},
    {"prompt": "b", "completion": "same", "rating": 2},
    {"prompt": "b", "completion": "same-ish", "rating": 2},
    {"prompt": "c", "completion": "alone", "rating": 4},
]


def test_ratings_become_pairs(tmp_path):
    path = write_jsonl(tmp_path / "rated.jsonl", RATED)
    pairs, report = read_preferences(path, use_margin=True)
    got = sorted((p["chosen"], p["rejected"], p["margin"]) for p in pairs)
    assert got == sorted([("best", "mid", 2), ("best", "mid too", 2), ("best", "worst", 4), ("mid", "worst", 2), ("mid too", "worst", 2)])
    assert all(p["prompt"] == "a" for p in pairs)
    assert (report.pairs, report.prompts, report.prompts_without_pairs, report.tied_pairs_dropped) == (5, 3, 2, 2)
    pairs, report = read_preferences(path, min_rating_gap=3)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "worst")] and "margin" not in pairs[0]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_ratings_from_csv_and_parquet(tmp_path, fmt):
    import datasets

    path = str(tmp_path / f"rated.{fmt}")
    getattr(datasets.Dataset.from_list(RATED), f"to_{fmt}")(path)
    pairs, _ = read_preferences(path)
    assert len(pairs) == 5


def test_pairs_file_with_margin_column(tmp_path):
    rows = [{"prompt": "p", "chosen": "x", "rejected": "y", "margin": 0.5}, {"prompt": "p", "chosen": "z", "rejected": "z", "margin": 1}]
    pairs, report = read_preferences(write_jsonl(tmp_path / "pairs.jsonl", rows), use_margin=True)
    assert pairs == [{"prompt": "p", "chosen": "x", "rejected": "y", "margin": 0.5, "_row": 0}]
    assert report.identical_pairs_dropped == 1


@pytest.mark.parametrize(
    "rows,message",
    [
        ([{"prompt": "p", "chosen": "x"}], r"lacks the columns of a preference set.*columns: prompt, chosen"),
        ([{"prompt": "p", "rating": 3}], r"lacks column\(s\) completion"),
        ([{"prompt": "p", "completion": "x", "rating": 3}, {"prompt": "p", "completion": "y", "rating": 7}], r"row 1: 'rating' is 7, outside 1-5"),
        ([{"prompt": "p", "completion": "x", "rating": "great"}], r"row 0: 'rating' is 'great', not a number"),
        ([{"prompt": "p", "completion": "x", "rating": 3}, {"prompt": "p", "completion": None, "rating": 2}], r"row 1: column 'completion' is missing"),
        ([{"prompt": "p", "completion": "x", "rating": 3}, {"prompt": "p", "completion": "y", "rating": 3}], r"gives no preference pair"),
        ([{"prompt": "p", "chosen": "x", "rejected": "y"}], None),
    ],
)
def test_data_errors_name_the_file_and_row(tmp_path, rows, message):
    path = write_jsonl(tmp_path / "bad.jsonl", rows)
    if message is None:  # the margin column is only needed with use_margin
        with pytest.raises(DataError, match=r"no 'margin' column"):
            read_preferences(path, use_margin=True)
        return
    with pytest.raises(DataError, match=message) as info:
        read_preferences(path)
    assert path in str(info.value)


def test_data_errors_come_before_the_model_loads(tmp_path, tiny_rm, monkeypatch):
    import audiorl.rl.reward_model as rm

    def no_model(*_, **__):
        raise AssertionError("the model loaded before the data was checked")

    monkeypatch.setattr(rm, "load_base_model", no_model)
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "p", "completion": "x", "rating": 9}])
    config = load_rm_config(None, [f"output_dir={tmp_path / 'o'}", f"model.path={tiny_rm}", f"data.train={bad}"])
    with pytest.raises(DataError, match="row 0"):
        train_reward_model(config)


def test_split_holds_out_whole_prompts():
    pairs = [{"prompt": f"p{i // 3}", "chosen": "a", "rejected": str(i)} for i in range(30)]
    train, held = split_by_prompt(pairs, 0.2, seed=0)
    assert len(held) == 6 and len(train) == 24
    assert not {p["prompt"] for p in train} & {p["prompt"] for p in held}
    train, held = split_by_prompt([{**p, "prompt": ""} for p in pairs], 0.2, seed=0)  # implicit prompts
    assert len(held) == 6 and len(train) == 24


@pytest.mark.parametrize(
    "overrides,message",
    [
        (["train.batch_size=0"], r"'train.batch_size' must be positive"),
        (["data.eval_fraction=1"], r"'data.eval_fraction' must be in \[0, 1\)"),
        (["data.template='{answer}'"], r"'data.template'.*must name \{completion\}"),
        (["model.dtype=fp32"], r"'model.dtype' is 'fp32'"),
        (["model.path=/nonexistent/rm", "model.build_tiny=false"], r"'model.path': '/nonexistent/rm' is not a Hugging Face model directory"),
        (["data.synthesize=null", "data.train=/nonexistent/x.jsonl"], r"'data.train': '/nonexistent/x.jsonl' does not exist"),
        (["data.train=x.txt"], r"must be .jsonl, .json, .parquet or .csv"),
    ],
)
def test_config_errors_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_rm_config(RECIPE, ["output_dir=/tmp/never", *overrides])


def test_an_audio_lm_checkpoint_is_refused_before_loading(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen2_audio"}))
    with pytest.raises(ConfigError, match="'qwen2_audio' model, which transformers cannot load as a sequence classifier"):
        load_rm_config(RECIPE, ["output_dir=/tmp/never", f"model.path={tmp_path}", "model.build_tiny=false"])


# ------------------------------------------------------------------- reward
TEXTS = [
    "<think>I compare the pitch with a middle tone.</think><answer>high</answer>",
    "low",
    "",
    "The small cat sees the dog near the house. " * 6,
    "<answer>high</answer><answer>",
    "今天天气很好",
    "<think>The tone sounds low.</think>",
    "high low mid",
]


def test_reward_module_examples():
    assert doctest.testmod(preference).failed == 0


def test_missing_model_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match=rf"reward 'preference_model': model '{tmp_path / 'nope'}' is not a Hugging Face checkpoint"):
        preference_model(["x"], ["p"], model=str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="reward 'preference_model' needs kwargs.model"):
        preference_model(["x"], ["p"])


def test_recipe_options_are_checked_before_anything_loads(tmp_path):
    from audiorl.rewards import RewardSet

    def spec(**kwargs):
        return SimpleNamespace(name="preference_model", weight=1.0, kwargs=kwargs, alias=None)

    with pytest.raises(ConfigError, match=r"model '.*nope' is not a Hugging Face checkpoint"):
        RewardSet([spec(model=str(tmp_path / "nope"))])
    (tmp_path / "rm").mkdir()
    (tmp_path / "rm" / "config.json").write_text("{}")
    with pytest.raises(ConfigError, match=r"normalize 'zscore' is not one of"):
        RewardSet([spec(model=str(tmp_path / "rm"), normalize="zscore")])


def test_batching_and_padding_do_not_change_scores(tiny_rm):
    prompts = [f"Prompt {i}: the tone is high." for i in range(len(TEXTS))]
    one = preference_model(TEXTS, prompts, model=tiny_rm, batch_size=1)
    for size in (3, 16):
        assert preference_model(TEXTS, prompts, model=tiny_rm, batch_size=size) == pytest.approx(one, abs=1e-5)
    assert len(set(np.round(one, 6))) == len(TEXTS)  # distinct texts score differently: padding was real


def test_batch_normalisation(tiny_rm):
    scores = np.array(preference_model(TEXTS, None, model=tiny_rm, normalize="batch"))
    assert abs(scores.mean()) < 1e-6 and scores.std() == pytest.approx(1.0, abs=1e-6)
    assert preference_model(TEXTS[:1], None, model=tiny_rm, normalize="batch") == [0.0]  # no spread: centred


def test_running_normalisation_pools_every_call(tiny_rm):
    reset_running_stats()
    raw = [preference_model(TEXTS[i : i + 3], None, model=tiny_rm) for i in range(0, len(TEXTS), 3)]
    outs = [preference_model(TEXTS[i : i + 3], None, model=tiny_rm, normalize="running") for i in range(0, len(TEXTS), 3)]
    pooled = np.concatenate(raw)
    expected_last = (np.array(raw[-1]) - pooled.mean()) / pooled.std()
    assert outs[-1] == pytest.approx(expected_last.tolist(), abs=1e-6)
    # once the statistics have seen the data, repeated calls give the same values; a single sample is scored
    # against them too (batch normalisation would give it 0), moving them by only its own weight
    first = preference_model(TEXTS, None, model=tiny_rm, normalize="running")
    for _ in range(5):
        again = preference_model(TEXTS, None, model=tiny_rm, normalize="running")
    assert again == pytest.approx(first, abs=1e-6)
    single = preference_model(TEXTS[:1], None, model=tiny_rm, normalize="running")
    assert single[0] == pytest.approx(first[0], abs=0.05) and abs(single[0]) > 0.1
    reset_running_stats()


def test_templates(tiny_rm):
    scorer = preference.load_scorer(tiny_rm)
    assert scorer.resolve_template() == "chat"  # the tiny tokenizer has one
    text = scorer.render("Is it high?", "<answer>high</answer>  ", "Q: {prompt}\nA: {completion}")
    assert text == "Q: Is it high?\nA: <answer>high</answer><|im_end|>"
    chat = scorer.render("Is it high?", "high", "chat")
    assert chat.endswith("<|im_start|>user\nIs it high?<|im_end|>\n<|im_start|>assistant\nhigh<|im_end|>")
    plain = preference_model(["high"], ["Is it high?"], model=tiny_rm, template="{prompt}\n{completion}")
    assert plain != preference_model(["high"], ["Is it high?"], model=tiny_rm)
    with pytest.raises(ConfigError, match="template"):
        preference_model(["high"], ["p"], model=tiny_rm, template="{prompt} {other}")
    with pytest.raises(ConfigError, match="normalize 'zscore'"):
        preference_model(["high"], ["p"], model=tiny_rm, normalize="zscore")


def test_long_text_keeps_its_end(tiny_rm):
    long = "word " * 20000 + "<answer>high</answer>"
    (score,) = preference_model([long], ["p"], model=tiny_rm, max_length=64)
    scorer = preference.load_scorer(tiny_rm)
    ids = scorer.encode([scorer.render("p", long, "chat")])[0]
    assert score == pytest.approx(float(scorer.score_ids([ids[-64:]])[0]), abs=1e-5)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.text(max_size=300), min_size=0, max_size=4), st.text(max_size=100))
def test_reward_never_crashes_and_stays_real(tiny_rm, completions, prompt):
    scores = preference_model(completions, [prompt] * len(completions), model=tiny_rm, batch_size=2)
    assert len(scores) == len(completions) and all(isinstance(s, float) and math.isfinite(s) for s in scores)
