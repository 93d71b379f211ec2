"""audiorl accepts a range of TRL versions, and CI tests both ends: the suite runs on the newest (constraints.txt),
the tests that use TRL also run here on the oldest, which `scripts/install.sh --test` puts in `<venv>/trl-lowest`."""

from __future__ import annotations

import os
import re
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOWEST_DIR = os.path.join(sys.prefix, "trl-lowest")
# SFT on SFTTrainer, the RL core (TRL's log-prob utilities, parity with TRL's GRPO loss), RewardTrainer
TRL_TESTS = ["tests/test_sft.py", "tests/test_rl_core_parity.py", "tests/test_reward_model.py", "tests/test_rl_algos.py"]


def trl_range() -> tuple[str, str]:
    specs = re.findall(r'^\s*"(trl[^"]*)"', open(os.path.join(REPO, "pyproject.toml")).read(), flags=re.M)
    assert len(specs) == 1, specs
    match = re.fullmatch(r"trl>=([0-9.]+),<([0-9.]+)", specs[0])
    assert match, f"the trl requirement must be a range >=low,<high, got '{specs[0]}'"
    return match.group(1), match.group(2)


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split("."))


def test_the_pinned_trl_is_inside_the_range():
    import trl

    low, high = trl_range()
    pinned = next(line.split("==")[1].strip() for line in open(os.path.join(REPO, "constraints.txt")) if line.startswith("trl=="))
    assert _version(low) <= _version(pinned) < _version(high)
    assert trl.__version__ == pinned


def test_the_trl_using_tests_pass_on_the_oldest_trl_in_the_range():
    low, _ = trl_range()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([LOWEST_DIR, REPO])}
    probe = subprocess.run([sys.executable, "-c", "import trl; print(trl.__version__, trl.__file__)"], capture_output=True, text=True, env=env)
    assert probe.returncode == 0, probe.stderr[-2000:]
    version, path = probe.stdout.split()
    assert _version(version)[: len(_version(low))] == _version(low), probe.stdout
    assert path.startswith(LOWEST_DIR), f"the oldest TRL is not installed in {LOWEST_DIR} (scripts/install.sh --test)"
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *TRL_TESTS], capture_output=True, text=True, env=env, cwd=REPO, timeout=1500
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout and " failed" not in proc.stdout
