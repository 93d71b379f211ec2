"""The reward registry, the ``@reward`` decorator and name resolution for YAML.

A reward is a function ``fn(completions, **columns) -> list[float | None]``: one value per
completion (``None``: "does not apply to this sample", left out of that sample's weighted sum).
It receives the completion texts, ``prompts`` (the rendered prompt texts) and every dataset column
it names as a parameter (or all of them through ``**kwargs``), each as a list aligned with
``completions``, plus the constructor arguments given in YAML under ``kwargs``.

In YAML a reward is named by its registered name (``label_accuracy``) or by ``module:function``.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from audiorl.common.errors import ConfigError
from audiorl.common.registry import Registry, import_object

RewardFn = Callable[..., list]

REWARDS: Registry[RewardFn] = Registry("reward")

#: Arguments the runtime passes to every reward; anything else a reward requires must be a dataset column.
RUNTIME_ARGS = ("completions", "prompts")


def reward(name: str) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function under ``name``::

        @reward("exact_match")
        def exact_match(completions, label, **_):
            return [float(c.strip() == l) for c, l in zip(completions, label)]
    """
    return REWARDS.register(name)  # type: ignore[return-value]


def resolve_reward(name: str) -> RewardFn:
    """A registered name or ``module:function``. Raises ConfigError naming the reward."""
    import audiorl.rewards.builtin  # noqa: F401  (registers the built-ins)

    if name in REWARDS:
        return REWARDS.get(name)
    if ":" not in name:
        REWARDS.get(name)  # raises with the registered names and the nearest one
    try:
        fn = import_object(name)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"reward '{name}' could not be imported: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"reward '{name}' is not callable")
    return fn


def required_columns(fn: RewardFn, bound: dict) -> list[str]:
    """Parameters of ``fn`` that must come from dataset columns (no default, not runtime, not bound)."""
    params = inspect.signature(fn).parameters.values()
    return [
        p.name
        for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in RUNTIME_ARGS
        and p.name not in bound
    ]


def check_signature(name: str, fn: RewardFn, bound: dict) -> None:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    params = sig.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "completions" not in params and not takes_var_kw:
        raise ConfigError(f"reward '{name}' must accept a 'completions' argument")
    for key in bound:
        if key not in params and not takes_var_kw:
            raise ConfigError(f"reward '{name}' has no parameter '{key}' (given in its kwargs)")
