"""Run ownership of output directories: a run id, refusal of a used directory, overwrite, partial synthesis, stale temporaries."""

from __future__ import annotations

import json
import os

import pytest
from audiorl.common.errors import ConfigError
from audiorl.common.io import remove_stale_temporaries
from audiorl.rl import run_dir


def _fake_run(out, stage_dirs=("sft_model",)):
    os.makedirs(out, exist_ok=True)
    run_dir.update(str(out), run_id="r1", status="finished", stage_dirs=[])
    for name in stage_dirs:
        (out / name).mkdir()
        run_dir.update(str(out), stage_dirs=name)
    for name in ("recipe.yaml", "metrics.jsonl", "summary.json", "eval_samples_after.jsonl"):
        (out / name).write_text("run 1\n")
    (out / "adapter").mkdir()


def test_a_used_output_dir_is_refused_unless_overwritten(tmp_path):
    out = tmp_path / "run"
    _fake_run(out)
    (out / "tiny_model").mkdir()  # an input the recipe builds here: not run 1's output
    (out / "data").mkdir()
    with pytest.raises(ConfigError, match=r"'output_dir': '.*run' holds the outputs of run r1 \(run.json, recipe.yaml, metrics.jsonl, "
                       r"summary.json, adapter, eval_samples_after.jsonl, sft_model\).*overwrite=true"):
        run_dir.claim(str(out), overwrite=False, keep=[])
    run_id = run_dir.claim(str(out), overwrite=True, keep=[str(out / "tiny_model")])
    assert sorted(os.listdir(out)) == ["data", "run.json", "tiny_model"]
    run = run_dir.read_run(str(out))
    assert run["run_id"] == run_id != "r1" and run["status"] == "running" and run["stage_dirs"] == []


def test_overwrite_never_removes_this_runs_inputs(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, stage_dirs=("sft_model",))
    model = out / "sft_model"  # run 1's SFT weights, now run 2's model.path
    run_dir.claim(str(out), overwrite=True, keep=[str(model)])
    assert model.is_dir() and not (out / "adapter").exists()


def test_a_fresh_directory_and_inputs_only_are_not_used(tmp_path):
    (tmp_path / "fresh" / "tiny_model").mkdir(parents=True)
    (tmp_path / "fresh" / "rm").mkdir()  # step_audio2_rl_tiny's reward model, trained into a sub-folder first
    run_dir.claim(str(tmp_path / "fresh"), overwrite=False, keep=[])
    run_dir.claim(str(tmp_path / "new" / "deeper"), overwrite=False, keep=[])


def test_stale_temporaries_of_killed_saves_are_removed(tmp_path):
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    (tmp_path / f".merged.tmp-{dead}").mkdir()
    (tmp_path / f".adapter.old-{dead}").mkdir()
    (tmp_path / f".merged.tmp-{os.getpid()}").mkdir()  # this process's own save in progress stays
    (tmp_path / "merged").mkdir()
    assert sorted(remove_stale_temporaries(str(tmp_path))) == [f".adapter.old-{dead}", f".merged.tmp-{dead}"]
    assert sorted(os.listdir(tmp_path)) == [f".merged.tmp-{os.getpid()}", "merged"]


def test_an_interrupted_synthesis_is_detected_and_redone(tmp_path, monkeypatch, tiny_model_dir):
    from audiorl.data import synth
    from audiorl.rl.config import load_recipe
    from audiorl.rl.train import prepare_inputs

    from tests.conftest import QUICKSTART

    config = load_recipe(QUICKSTART, [f"output_dir={tmp_path}", "model.build_tiny=false", f"model.path={tiny_model_dir}", "data.synthesize.n_train=4", "data.synthesize.n_eval=2"])
    real = synth.write_rows

    def killed_after_train(path, rows, fmt):
        out = real(path, rows, fmt)
        if path.endswith("train.jsonl"):
            raise KeyboardInterrupt  # a kill between train.jsonl and eval.jsonl
        return out

    monkeypatch.setattr(synth, "write_rows", killed_after_train)
    with pytest.raises(KeyboardInterrupt):
        prepare_inputs(config)
    data = tmp_path / "data"
    assert (data / "train.jsonl").is_file() and not (data / "eval.jsonl").exists() and synth.synthesis_incomplete(str(data))
    monkeypatch.setattr(synth, "write_rows", real)
    prepare_inputs(config)
    assert (data / "eval.jsonl").is_file() and synth.synthesis_incomplete(str(data)) is None
    assert len(open(data / "train.jsonl").read().splitlines()) == 4
    stamp = os.path.getmtime(data / "train.jsonl")
    prepare_inputs(config)  # complete: not written again
    assert os.path.getmtime(data / "train.jsonl") == stamp
    (data / "eval.jsonl").unlink()  # a split missing (an older interrupted run): written again
    prepare_inputs(config)
    assert (data / "eval.jsonl").is_file()
    assert json.loads(open(data / "train.jsonl").readline())["audio"]


def test_train_refuses_a_used_output_dir_before_anything_loads(tmp_path, capsys):
    from audiorl.rl.cli import main

    from tests.conftest import QUICKSTART

    _fake_run(tmp_path / "run")
    assert main(["train", QUICKSTART, f"output_dir={tmp_path / 'run'}"]) == 2
    err = capsys.readouterr().err
    assert "holds the outputs of run r1" in err and "--overwrite" in err
    assert not (tmp_path / "run" / "tiny_model").exists()  # refused before building anything


def test_validate_says_train_would_refuse_a_used_output_dir(tmp_path, capsys):
    from audiorl.rl.cli import main

    from tests.conftest import QUICKSTART

    _fake_run(tmp_path / "run")
    assert main(["validate", QUICKSTART, f"output_dir={tmp_path / 'run'}"]) == 0
    assert "`audiorl train` would refuse: 'output_dir':" in capsys.readouterr().out
    assert main(["validate", QUICKSTART, f"output_dir={tmp_path / 'run'}", "overwrite=true"]) == 0
    assert "would refuse" not in capsys.readouterr().out
