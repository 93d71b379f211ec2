"""``metrics.jsonl`` (one JSON object per logged step), the reward-curve plot and the summary table."""

from __future__ import annotations

import json
import math
import os
from typing import Any

from transformers import TrainerCallback


def _clean(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsLog:
    """Appends rows ``{"step", "stage", ...}`` to ``metrics.jsonl`` and keeps them for plots and tables."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, "metrics.jsonl")
        self.rows: list[dict[str, Any]] = []
        open(self.path, "w").close()

    def log(self, step: int, stage: str, values: dict[str, Any]) -> dict[str, Any]:
        # The mean sampled reward leads the row, so readers scanning for "reward" find it first.
        ordered = {k: values[k] for k in ("reward", "reward_std") if k in values}
        ordered.update({k: v for k, v in values.items() if k not in ordered})
        row = {"step": int(step), "stage": stage, **{k: _clean(v) for k, v in ordered.items()}}
        self.rows.append(row)
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        return row

    def series(self, stage: str, key: str) -> list[tuple[int, float]]:
        return [(r["step"], r[key]) for r in self.rows if r["stage"] == stage and r.get(key) is not None]


class TrainerMetrics(TrainerCallback):
    """Forwards a TRL trainer's logs to the MetricsLog under ``stage``."""

    def __init__(self, metrics: MetricsLog, stage: str):
        self.metrics = metrics
        self.stage = stage

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and not any(k.startswith("train_") for k in logs):  # skip the end-of-training summary
            self.metrics.log(state.global_step, self.stage, dict(logs))


def plot_rewards(metrics: MetricsLog, path: str, accuracy_key: str | None, spans: list[tuple[str, int, int]] = ()) -> str:
    """Each stage's mean sampled reward and the held-out accuracy over the run's steps; stage boundaries marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    rewards: list[tuple[int, float]] = []
    colors = ["tab:blue", "tab:green", "tab:purple", "tab:brown", "tab:red"]
    for k, (stage, first, last) in enumerate(spans):
        series = metrics.series(stage, "reward")
        if not series:
            continue
        rewards += series
        steps, values = zip(*series)
        ax.plot(steps, values, label=f"{stage}: mean sampled reward", color=colors[k % len(colors)])
        if k:
            ax.axvline(first - 0.5, color="grey", alpha=0.4, linestyle="--")
    if accuracy_key:
        accuracy = metrics.series("eval", accuracy_key)
        if accuracy:
            steps, values = zip(*accuracy)
            ax.plot(steps, values, "o-", label=f"held-out {accuracy_key.removeprefix('eval/')} (greedy)", color="tab:orange")
    ax.set_xlabel("step")
    ax.set_ylim(min(-0.05, min((v for _, v in rewards), default=0.0) - 0.05), max(1.05, max((v for _, v in rewards), default=1.0) + 0.05))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title("audiorl: " + " -> ".join(stage for stage, _, _ in spans) if spans else "audiorl")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def before_after_table(before: dict[str, float], after: dict[str, float], extra: dict[str, tuple[float, float]] | None = None) -> str:
    rows = [(k, before.get(k, math.nan), after.get(k, math.nan)) for k in before]
    rows += [(k, a, b) for k, (a, b) in (extra or {}).items()]
    width = max(len(k) for k, _, _ in rows) + 2
    lines = [f"{'metric':<{width}}{'before':>10}{'after':>10}", "-" * (width + 20)]
    lines += [f"{k:<{width}}{a:>10.3f}{b:>10.3f}" for k, a, b in rows]
    return "\n".join(lines)
