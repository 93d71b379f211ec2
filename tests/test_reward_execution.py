"""Reward plug-ins (file, entry point, class), input audio for rewards, and execution: chunks, worker
processes, timeouts and ``on_error``."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import os
import textwrap
from types import SimpleNamespace

import pytest
from audiorl.common.errors import ConfigError, RewardError
from audiorl.data.dataset import read_rows
from audiorl.rewards import RewardSet, resolve_reward
from audiorl.rl.config import load_recipe

from tests import reward_plugins


def spec(name, weight=1.0, alias=None, **options):
    kwargs = options.pop("kwargs", {})
    return SimpleNamespace(name=name, weight=weight, kwargs=kwargs, alias=alias, **options)


# ------------------------------------------------------------------- plug-ins
USER_FILE = """
def shout(completions, **_):
    return [float(c.isupper()) for c in completions]
"""


def test_reward_from_a_file_path(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(USER_FILE)
    scores = RewardSet([spec(f"{path}:shout")]).score(["LOUD", "quiet"])
    assert scores.names == ["shout"] and scores.total.tolist() == [1.0, 0.0]
    with pytest.raises(ConfigError, match=r"defines no 'whisper'"):
        resolve_reward(f"{path}:whisper")
    with pytest.raises(ConfigError, match=r"file '.*nowhere.py' does not exist"):
        resolve_reward(f"{tmp_path}/nowhere.py:shout")


def write_recipe(tmp_path, rewards) -> str:
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(json.dumps({
        "output_dir": str(tmp_path / "out"),
        "model": {"build_tiny": True, "path": str(tmp_path / "m")},
        "data": {"train": str(tmp_path / "train.jsonl"), "synthesize": {"task": "pitch"}},
        "rewards": rewards,
    }))
    return str(recipe)


def test_reward_file_next_to_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "my_rewards.py").write_text(USER_FILE)
    monkeypatch.chdir(tmp_path.parent)
    config = load_recipe(write_recipe(tmp_path, [{"name": "my_rewards.py:shout"}]))
    assert config.rewards[0].name == f"{tmp_path}/my_rewards.py:shout"


def test_broken_reward_file_is_named(tmp_path):
    path = tmp_path / "broken.py"
    path.write_text("def f(:\n")
    with pytest.raises(ConfigError, match=r"importing '.*broken.py' failed: SyntaxError"):
        resolve_reward(f"{path}:f")


def test_reward_from_an_installed_entry_point(tmp_path, monkeypatch):
    """A package declaring ``[audiorl.rewards] brevity = pkg.mod:fn`` is found by its entry-point name."""
    (tmp_path / "audiorl_demo_plugin").mkdir()
    (tmp_path / "audiorl_demo_plugin" / "__init__.py").write_text(
        "def brevity(completions, limit=5, **_):\n    return [float(len(c) <= limit) for c in completions]\n"
    )
    dist = tmp_path / "audiorl_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: audiorl-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[audiorl.rewards]\nbrevity = audiorl_demo_plugin:brevity\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    scores = RewardSet([spec("brevity", kwargs={"limit": 3})]).score(["abc", "abcd"])
    assert scores.total.tolist() == [1.0, 0.0]


def test_class_reward_is_constructed_once_on_first_call():
    reward_plugins.CountingReward.constructed = 0
    rewards = RewardSet([spec("tests.reward_plugins:CountingReward", kwargs={"bonus": 0.5})])
    assert reward_plugins.CountingReward.constructed == 0  # validating a recipe loads nothing
    rewards.check_columns(["label"], "data")
    with pytest.raises(ConfigError, match=r"needs column\(s\) label"):
        rewards.check_columns(["other"], "data")
    for _ in range(3):
        assert rewards.score(["a", "b"], columns={"label": ["a", "x"]}).total.tolist() == [1.5, 0.5]
    assert reward_plugins.CountingReward.constructed == 1
    assert rewards.rewards[0].callable.calls == 3
    with pytest.raises(ConfigError, match=r"has no constructor parameter 'bogus'"):
        RewardSet([spec("tests.reward_plugins:CountingReward", kwargs={"bogus": 1})])


def test_async_reward_inside_a_running_event_loop():
    rewards = RewardSet([spec("tests.reward_plugins:async_len")])

    async def main():
        return rewards.score(["ab", "abc"]).total.tolist()

    assert asyncio.run(main()) == [2.0, 3.0]


# ----------------------------------------------------------------------- audio
def test_rewards_receive_the_input_audio(pitch_data):
    """A reward naming ``waveforms`` gets each sample's clips; here it measures the tone's pitch itself."""
    rows = read_rows(pitch_data["train"])
    base = os.path.dirname(pitch_data["train"])
    audio = [[os.path.join(base, r["audio"])] for r in rows]
    right = [f"it is {r['label']}" for r in rows]
    wrong = [f"it is {'low' if r['label'] == 'high' else 'high'}" for r in rows]
    rewards = RewardSet([spec("tests.reward_plugins:answer_matches_measured_pitch")])
    rewards.check_columns(["audio"], "data")
    with pytest.raises(ConfigError, match=r"needs column\(s\) audio"):
        rewards.check_columns(["label"], "data")
    assert rewards.score(right, columns={"audio": audio, "label": [r["label"] for r in rows]}).total.tolist() == [1.0] * len(rows)
    assert rewards.score(wrong, columns={"audio": audio}).total.tolist() == [0.0] * len(rows)
    with pytest.raises(RewardError, match=r"takes 'waveforms' but the batch has no 'audio' column"):
        rewards.score(right)
    bad = [[str(tmp)] for tmp in [os.path.join(base, "missing.wav")]] + audio[1:]
    with pytest.raises(RewardError, match=r"the audio of sample 0 could not be read: .*missing.wav"):
        rewards.score(right, columns={"audio": bad})


def test_rewards_without_waveforms_do_not_load_audio():
    rewards = RewardSet([spec("tests.reward_plugins:length_penalty")])  # takes **_
    rewards.score(["ab"], columns={"audio": [["/nonexistent.wav"]]})  # the path is never opened


# ------------------------------------------------------------------- execution
@pytest.mark.parametrize("on_error,expected", [("zero", [1.0, 0.0, 1.0, 0.0]), ("skip", [1.0, math.nan, 1.0, math.nan])])
def test_on_error_scores_the_other_samples(on_error, expected, caplog):
    rewards = RewardSet([spec("tests.reward_plugins:fails_on_boom", on_error=on_error)])
    with caplog.at_level(logging.WARNING):
        scores = rewards.score(["fine", "boom", "ok", "boom!"])
    assert scores.values[:, 0].tolist() == pytest.approx(expected, nan_ok=True)
    assert scores.errors == {"fails_on_boom": 2}
    assert "reward 'fails_on_boom' failed on 2 sample(s)" in caplog.text and "sample 1" in caplog.text


def test_on_error_must_be_known():
    with pytest.raises(ConfigError, match=r"on_error is 'ignore'; choose one of: raise, zero, skip"):
        RewardSet([spec("cot_format", on_error="ignore")])
    with pytest.raises(ConfigError, match=r"timeout_s must be positive"):
        RewardSet([spec("cot_format", timeout_s=0)])


def test_batch_size_splits_the_calls():
    rewards = RewardSet([spec("tests.reward_plugins:CountingReward", batch_size=2)])
    rewards.score(list("abcde"), columns={"label": list("abcde")})
    assert rewards.rewards[0].callable.calls == 3


def test_timeout_names_the_reward_and_samples():
    # The samples that do not hang must answer within the timeout under any load (they return at once),
    # and the one that hangs must outlast it by far: 1 s against 30 s.
    slow = {"timeout_s": 1.0, "kwargs": {"delay": 30.0}}
    rewards = RewardSet([spec("tests.reward_plugins:slow_on_slow", **slow)])
    with pytest.raises(RewardError, match=r"reward 'slow_on_slow' timed out \(no answer within 1 s\) on samples 0-2"):
        rewards.score(["a", "slow", "b"])
    zero = RewardSet([spec("tests.reward_plugins:slow_on_slow", on_error="zero", **slow)])
    scores = zero.score(["a", "slow", "b"])
    assert scores.total.tolist() == [1.0, 0.0, 1.0] and scores.errors == {"slow_on_slow": 1}


def test_worker_processes_give_the_same_values_and_survive_a_timeout():
    completions = [f"text {i}" * (i + 1) for i in range(10)]
    inline = RewardSet([spec("tests.reward_plugins:length_penalty")]).score(completions)
    pooled = RewardSet(
        [
            spec("tests.reward_plugins:length_penalty", workers=2),
            spec("tests.reward_plugins:pid", workers=2, weight=0.0),
            # Start-up (spawn, imports) does not count against a call's timeout; 60 s is far below the 600 s hang.
            spec(
                "tests.reward_plugins:slow_on_slow", workers=1, timeout_s=60.0, on_error="skip", kwargs={"delay": 600.0}
            ),
        ]
    )
    slow = pooled.rewards[2]
    try:
        scores = pooled.score(completions)
        assert scores.values[:, 0].tolist() == inline.total.tolist()
        assert scores.values[:, 2].tolist() == [1.0] * len(completions)
        pids = set(scores.values[:, 1].tolist())
        assert os.getpid() not in pids and len(pids) <= 2  # run in the worker processes, not here
        slow.timeout_s = 0.5  # the hung sample alone: it times out however slow the pool is to start
        assert math.isnan(pooled.score(["slow"]).values[0, 2])
        slow.timeout_s = 60.0
        # The hung worker was terminated and the pool rebuilt: one still busy for 600 s would leave these NaN.
        assert pooled.score(["a", "b"]).values[:, 2].tolist() == [1.0, 1.0]
    finally:
        pooled.close()


def test_workers_resolve_file_rewards(tmp_path):
    path = tmp_path / "my_rewards.py"
    path.write_text(textwrap.dedent(USER_FILE))
    rewards = RewardSet([spec(f"{path}:shout", workers=1)])
    try:
        assert rewards.score(["LOUD", "quiet"]).total.tolist() == [1.0, 0.0]
    finally:
        rewards.close()


def test_recipe_reward_options_round_trip(tmp_path):
    options = {"on_error": "skip", "timeout_s": 5, "workers": 2, "batch_size": 4}
    r = load_recipe(write_recipe(tmp_path, [{"name": "cot_format", **options}])).rewards[0]
    assert (r.on_error, r.timeout_s, r.workers, r.batch_size) == ("skip", 5.0, 2, 4)
    with pytest.raises(ConfigError, match=r"rewards.0: reward 'cot_format': on_error is 'nope'"):
        load_recipe(write_recipe(tmp_path, [{"name": "cot_format", "on_error": "nope"}]))


def test_a_reward_that_hangs_on_every_sample_costs_a_few_timeouts_and_its_work_is_killed():
    """Not one timeout per sample ((n+1) x timeout_s per call before), and no thread or process left running."""
    import multiprocessing
    import threading

    threads = threading.active_count()
    rewards = RewardSet([spec("tests.reward_plugins:hangs", on_error="zero", timeout_s=0.5)])
    bound = rewards.rewards[0]
    try:
        for _ in range(2):
            scores = rewards.score([f"c{i}" for i in range(8)])
            assert scores.values[:, 0].tolist() == [0.0] * 8 and scores.errors == {"hangs": 8}
        # per call: the batch, then two samples re-run alone; the other six are not run
        assert bound._pool.restarts == 2 * 3
        assert threading.active_count() == threads  # nothing abandoned in this process
        alive = [p for p in multiprocessing.active_children() if p.name.startswith("audiorl-reward-")]
        assert len(alive) <= 1  # the one fresh worker waiting for the next call; every hung one was killed
    finally:
        rewards.close()
    assert not [p for p in multiprocessing.active_children() if p.name.startswith("audiorl-reward-")]


def test_start_up_does_not_count_against_the_timeout():
    # The constructor takes 3 s, the timeout is 1 s: were start-up counted, every sample would time out.
    rewards = RewardSet([spec("tests.reward_plugins:SlowToStart", timeout_s=1.0, on_error="zero", kwargs={"delay": 3.0})])
    try:
        assert rewards.score(["a", "b"]).total.tolist() == [1.0, 1.0]
    finally:
        rewards.close()


def test_one_hung_sample_among_healthy_ones_on_two_workers():
    rewards = RewardSet([spec("tests.reward_plugins:slow_on_slow", workers=2, timeout_s=5.0, on_error="skip", kwargs={"delay": 3600})])
    try:
        scores = rewards.score(["a", "b", "slow", "c", "d"])
        assert scores.errors == {"slow_on_slow": 1}
        values = scores.values[:, 0]
        assert math.isnan(values[2]) and values[[0, 1, 3, 4]].tolist() == [1.0] * 4
    finally:
        rewards.close()
