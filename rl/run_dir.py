"""Which run owns an output directory: a run id in ``run.json``, ``recipe.yaml`` and ``summary.json``.

A fresh run into a directory that holds another run's outputs refuses to start (before anything
loads) unless told to overwrite (``overwrite: true``, ``audiorl train RECIPE --overwrite``); then
that run's outputs are removed first, so that no file of run 1 sits beside run 2's (run 1's
adapter on run 2's SFT weights). Inputs a recipe builds inside ``output_dir`` (the quickstart's
``tiny_model/`` and ``data/``) are not outputs: they stay and are reused.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import time
import uuid
from typing import Any

from audiorl.common.errors import ConfigError
from audiorl.common.io import remove_stale_temporaries

log = logging.getLogger("audiorl")

RUN_FILE = "run.json"
# What an RL run writes into output_dir besides its stages' <name>_model/ folders (listed in run.json).
OUTPUTS = ("run.json", "recipe.yaml", "metrics.jsonl", "summary.json", "reward_curve.png", "adapter", "merged")


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S") + "-" + uuid.uuid4().hex[:8]


def read_run(output_dir: str) -> dict[str, Any]:
    try:
        with open(os.path.join(output_dir, RUN_FILE), encoding="utf-8") as f:
            run = json.load(f)
        return run if isinstance(run, dict) else {}
    except (OSError, ValueError):
        return {}


def _outputs_of_earlier_run(output_dir: str, keep: list[str]) -> list[str]:
    run = read_run(output_dir)
    names = [n for n in OUTPUTS if os.path.lexists(os.path.join(output_dir, n))]
    names += sorted(os.path.basename(p) for p in glob.glob(os.path.join(output_dir, "eval_samples_*.jsonl")))
    stage_dirs = run.get("stage_dirs") if isinstance(run.get("stage_dirs"), list) else []
    names += [
        n for n in stage_dirs
        if isinstance(n, str) and os.sep not in n and n not in (".", "..") and os.path.isdir(os.path.join(output_dir, n))
    ]
    protected = [os.path.abspath(p) for p in keep if p]
    out = []
    for name in dict.fromkeys(names):
        path = os.path.abspath(os.path.join(output_dir, name))
        if any(p == path or p.startswith(path + os.sep) for p in protected):
            continue  # an input of this run (its model, its data) is never removed
        out.append(name)
    return out


def refusal(output_dir: str, keep: list[str]) -> str | None:
    """Why a fresh run into ``output_dir`` would be refused (another run's outputs are there), or None."""
    earlier = _outputs_of_earlier_run(output_dir, keep) if os.path.isdir(output_dir) else []
    if not earlier:
        return None
    previous = read_run(output_dir).get("run_id")
    who = f"run {previous}" if previous else "an earlier run"
    return (
        f"'output_dir': '{output_dir}' holds the outputs of {who} ({', '.join(earlier)}): choose another "
        "output_dir, or replace them with overwrite=true (`audiorl train RECIPE --overwrite`)"
    )


def claim(output_dir: str, overwrite: bool, keep: list[str]) -> str:
    """Make ``output_dir`` this run's (refusing one that holds another run's outputs unless ``overwrite``); returns the run id.

    ``keep``: this run's inputs (model path, data files), never removed even if they sit in ``output_dir``.
    """
    earlier = _outputs_of_earlier_run(output_dir, keep) if os.path.isdir(output_dir) else []
    if earlier:
        previous = read_run(output_dir).get("run_id")
        who = f"run {previous}" if previous else "an earlier run"
        if not overwrite:
            raise ConfigError(refusal(output_dir, keep))
        log.warning("overwrite: removing the outputs of %s in %s: %s", who, output_dir, ", ".join(earlier))
        for name in earlier:
            path = os.path.join(output_dir, name)
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
    os.makedirs(output_dir, exist_ok=True)
    remove_stale_temporaries(output_dir)
    run_id = new_run_id()
    update(output_dir, run_id=run_id, status="running", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"), stage_dirs=[])
    return run_id


def update(output_dir: str, **fields: Any) -> None:
    """Merge ``fields`` into run.json (written whole, then renamed: never half-written)."""
    run = read_run(output_dir)
    for key, value in fields.items():
        if key == "stage_dirs" and isinstance(value, str):
            run.setdefault("stage_dirs", []).append(value)
        else:
            run[key] = value
    tmp = os.path.join(output_dir, f".{RUN_FILE}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(run, f, indent=2)
    os.replace(tmp, os.path.join(output_dir, RUN_FILE))
