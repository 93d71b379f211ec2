"""Fuzzing the user's inputs: recipe overrides (keys, values) and data files (rows, bytes) never end in a
raw traceback. Every failure is an audiorl error (common/errors.py) that names the key, the file or
the row, raised before anything heavy loads."""

from __future__ import annotations

import json
import os
import re
import tempfile

from audiorl.common.errors import AudioRLError, collect_missing_inputs
from audiorl.data.dataset import load_examples
from audiorl.rl.config import list_keys, load_recipe
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import QUICKSTART

# Real key paths (stages and rewards by index and by name), so that the fuzz reaches the checks behind them.
_KEYS = sorted(
    {
        re.sub(r"^stages\.N\.", "stages.1.", re.sub(r"^rewards\.N\.", "rewards.0.", line.split()[0]))
        for line in list_keys()
        if line and not line.startswith(("rewards.N.* ", "stages.N.* "))
    }
) + ["stages.grpo.max_steps", "stages.sft.epochs", "stages.grpo.rewards", "rewards", "stages", "rewards.0.kwargs"]

_SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12), st.sampled_from(["-1", "0", "1e39", ".nan", "[]", "{}", "[{}]", "{a: 1}", "null", "~", "'", "[", "{x", "${oops}"]),
)


def _yaml_value(value) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)


_KEY = st.one_of(
    st.sampled_from(_KEYS),
    st.builds(lambda k, i: re.sub(r"\.\d+\.", f".{i}.", k, count=1), st.sampled_from(_KEYS), st.sampled_from(["-1", "7", "x", "", "01"])),
    st.builds(lambda k, extra: f"{k}.{extra}", st.sampled_from(_KEYS), st.text("abcxyz_0.", max_size=6)),
    st.text(max_size=16),
)
_OVERRIDE = st.one_of(
    st.builds(lambda k, v: f"{k}={_yaml_value(v)}", _KEY, _SCALARS),
    st.builds(lambda k, v: f"{k}={json.dumps(v)}", _KEY, st.lists(st.dictionaries(st.sampled_from(["name", "weight", "kwargs", "x"]), _SCALARS, max_size=3), max_size=2)),
    st.text(max_size=20),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_OVERRIDE, min_size=1, max_size=3))
def test_recipe_overrides_never_give_a_raw_traceback(overrides):
    try:
        with collect_missing_inputs():
            load_recipe(QUICKSTART, ["output_dir=/tmp/audiorl-fuzz-never", *overrides])
    except AudioRLError as exc:
        message = str(exc)
        assert message.strip(), overrides
        # names what is at fault: the override, a key path, or a reward
        assert "override" in message or "'" in message, message


_CELL = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8),
    st.lists(st.one_of(st.integers(), st.text(max_size=4)), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.sampled_from(["a.wav", "", "/nonexistent.wav", "../x.wav"]),
)
_ROW = st.dictionaries(st.sampled_from(["audio", "prompt", "label", "x"]), _CELL, max_size=4)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.lists(_ROW, max_size=4).map(lambda rows: "\n".join(json.dumps(r) for r in rows).encode()),
        st.binary(max_size=64),
        st.lists(st.one_of(_ROW.map(json.dumps), st.text(max_size=10)), max_size=4).map(lambda lines: "\n".join(lines).encode("utf-8", "surrogatepass")),
    ),
    st.sampled_from(["raise", "skip"]),
    st.sampled_from([".jsonl", ".json"]),
)
def test_data_files_never_give_a_raw_traceback(content, on_bad_audio, ext):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, f"d{ext}")
        with open(path, "wb") as f:
            f.write(content)
        try:
            examples = load_examples(path, on_bad_audio=on_bad_audio, max_audio_seconds=30.0)
        except AudioRLError as exc:
            assert path in str(exc), str(exc)  # every data error names the file
        else:
            assert examples and all(os.path.isfile(p) for e in examples for p in e["audio"])


_TOP = st.sampled_from(["output_dir", "model", "lora", "data", "rollout", "rewards", "stages", "eval", "threads", "seed", "overwrite", "x"])
_NODE = st.recursive(_SCALARS, lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text("abkmnprstx_", max_size=6), inner, max_size=3)), max_leaves=8)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(_TOP, _NODE, max_size=4), st.booleans())
def test_recipe_files_never_give_a_raw_traceback(recipe, as_json):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "r.yaml")
        with open(path, "w", encoding="utf-8", errors="surrogatepass") as f:
            f.write(json.dumps(recipe) if as_json else "\n".join(f"{k}: {_yaml_value(v)}" for k, v in recipe.items()))
        try:
            with collect_missing_inputs():
                load_recipe(path)
        except AudioRLError as exc:
            assert str(exc).strip()
