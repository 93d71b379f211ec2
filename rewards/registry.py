"""The reward registry, the ``@reward`` decorator and name resolution for YAML.

A reward is a function ``fn(completions, **columns) -> list[float | None]``: one value per
completion (``None``: "does not apply to this sample", left out of that sample's weighted sum).
It receives the completion texts, ``prompts`` (the rendered prompt texts) and every dataset column
it names as a parameter (or all of them through ``**kwargs``), each as a list aligned with
``completions``, plus the constructor arguments given in YAML under ``kwargs``. A reward that names
``waveforms`` gets each sample's input audio (a list of float32 arrays at ``sampling_rate`` Hz,
which it may also name) read from the ``audio`` column. A reward that names ``thinks``,
``answers`` or ``audio_codes`` gets that part of each completion (``PART_ARGS``).

The YAML ``kwargs`` of a reward are its options: each must be a named parameter of the function
(of a class: its constructor), else the recipe is refused with the nearest option's name. A
``**kwargs`` catch-all receives dataset columns, not options; a reward that reads options from it
declares them: ``@reward("name", options=("a", "b"))`` or ``fn.reward_options = ("a", "b")``.

A reward function may carry ``fn.check_kwargs(**kwargs)``: it is called when a recipe is validated,
before anything heavy loads, and raises ConfigError for bad options (a missing model path, say).

A reward may also be a class: it is constructed once, on its first call, with the YAML ``kwargs``,
and its instances are called like a reward function (state such as a loaded model lives there).

In YAML a reward is named, in this order, by
- its registered name (``label_accuracy``),
- the name of an entry point in the ``audiorl.rewards`` group of an installed package,
- ``path/to/file.py:function`` (a file, relative to the working directory or to the recipe),
- ``package.module:function``.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import os
import sys
from collections.abc import Callable
from importlib.metadata import entry_points

from audiorl.common.errors import ConfigError, nearest
from audiorl.common.registry import Registry, import_object

RewardFn = Callable[..., list]

REWARDS: Registry[RewardFn] = Registry("reward")

ENTRY_POINT_GROUP = "audiorl.rewards"

#: Arguments the runtime passes; a reward gets them by naming them. Anything else it requires must be a dataset column.
#: A completion's parts, for rewards that score one of them: ``thinks`` (the ``<think>`` text or None),
#: ``answers`` (the rest of its text: the interleaved speech text of a spoken reply included) and
#: ``audio_codes`` (its speech codes, pads dropped; empty for a text reply).
PART_ARGS = ("thinks", "answers", "audio_codes")
RUNTIME_ARGS = ("completions", "prompts", "waveforms", "sampling_rate", *PART_ARGS)
#: Runtime arguments passed only to rewards that name them (not through ``**kwargs``): they cost something to
#: build, or would reach every ``**kwargs`` catch-all.
ON_REQUEST_ARGS = ("waveforms", "sampling_rate", *PART_ARGS)


def reward(name: str, options: tuple[str, ...] | None = None) -> Callable[[RewardFn], RewardFn]:
    """Register a reward function under ``name``::

        @reward("exact_match")
        def exact_match(completions, label, **_):
            return [float(c.strip() == l) for c, l in zip(completions, label)]

    ``options``: YAML kwargs it reads from its ``**kwargs`` besides its named parameters.
    """
    register = REWARDS.register(name)

    def decorator(fn: RewardFn) -> RewardFn:
        if options is not None:
            fn.reward_options = tuple(options)  # type: ignore[attr-defined]
        return register(fn)  # type: ignore[operator]

    return decorator


def plugin_rewards() -> dict[str, object]:
    """Rewards that installed packages declare as entry points in the ``audiorl.rewards`` group (name -> entry point)."""
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _from_file(name: str, where: str) -> object:
    path, _, attr = name.rpartition(":")
    if not os.path.isfile(path):
        raise ConfigError(f"{where}: file '{path}' does not exist")
    path = os.path.abspath(path)
    # One module per file, named after its path, so the file is executed once and its classes pickle by name.
    module_name = "audiorl_reward_file_" + hashlib.sha1(path.encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except Exception as exc:
            del sys.modules[module_name]
            raise ConfigError(f"{where}: importing '{path}' failed: {type(exc).__name__}: {exc}") from exc
    if not hasattr(module, attr):
        raise ConfigError(f"{where}: '{path}' defines no '{attr}'")
    return getattr(module, attr)


def import_callable(name: str, where: str) -> object:
    """``path/to/file.py:name`` (relative to the working directory) or ``package.module:name``.

    Raises ConfigError starting with ``where`` (e.g. "reward 'x': vocoder 'mod:fn'") when it cannot
    be imported or is not callable. Rewards use it for the hooks their options name.
    """
    if ":" not in name:
        raise ConfigError(f"{where}: '{name}' is not of the form 'package.module:function' or 'path/file.py:function'")
    if name.rpartition(":")[0].endswith(".py"):
        fn = _from_file(name, where)
    else:
        try:
            fn = import_object(name)
        except (ImportError, AttributeError) as exc:
            raise ConfigError(f"{where} could not be imported: {exc}") from exc
    if not callable(fn):
        raise ConfigError(f"{where} is not callable")
    return fn


def resolve_reward(name: str) -> RewardFn:
    """A registered name, an entry point, ``file.py:function`` or ``module:function``. Raises ConfigError naming the reward."""
    import audiorl.rewards  # noqa: F401  (registers the built-ins)

    if name in REWARDS:
        return REWARDS.get(name)
    plugins = plugin_rewards()
    if name in plugins:
        try:
            fn = plugins[name].load()
        except Exception as exc:
            raise ConfigError(f"reward '{name}' (entry point {plugins[name].value}) could not be loaded: {exc}") from exc
    elif ":" not in name:
        REWARDS.get(name)  # raises with the registered names and the nearest one
    else:
        return import_callable(name, f"reward '{name}'")
    if not callable(fn):
        raise ConfigError(f"reward '{name}' is not callable")
    return fn


def call_signature(fn: object) -> inspect.Signature | None:
    """The signature a reward is called with (a class: its instances' ``__call__``)."""
    target = fn.__call__ if inspect.isclass(fn) else fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):
        return None


def required_columns(fn: RewardFn, bound: dict) -> list[str]:
    """Parameters of ``fn`` that must come from dataset columns (no default, not runtime, not bound)."""
    sig = call_signature(fn)
    if sig is None:
        return []
    bound = {} if inspect.isclass(fn) else bound  # a class takes its kwargs in the constructor
    return [
        p.name
        for p in sig.parameters.values()
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
        and p.default is p.empty
        and p.name not in RUNTIME_ARGS
        and p.name not in bound
        and p.name != "self"
    ]


def reward_options(fn: object) -> list[str]:
    """The YAML options a reward takes: its named parameters (a class: its constructor's) and declared ``reward_options``."""
    target = fn.__init__ if inspect.isclass(fn) else fn
    try:
        params = inspect.signature(target).parameters.values()
    except (TypeError, ValueError):
        params = []
    named = [
        p.name for p in params
        if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name not in RUNTIME_ARGS and p.name != "self"
    ]
    return named + [o for o in getattr(fn, "reward_options", ()) if o not in named]


def _check_accepts(what: str, fn: object, keys, name: str) -> None:
    options = reward_options(fn)
    for key in keys:
        if not isinstance(key, str) or key in RUNTIME_ARGS:
            raise ConfigError(f"reward '{name}': '{key}' cannot be given in kwargs (it is passed by the trainer)")
        if key not in options:
            listed = f"; its options: {', '.join(options)}" if options else "; it takes no options"
            raise ConfigError(f"reward '{name}' has no {what} '{key}'{nearest(key, options)} (given in its kwargs){listed}")


def check_signature(name: str, fn: RewardFn, bound: dict) -> None:
    sig = call_signature(fn)
    if sig is None:
        return
    params = sig.parameters
    takes_var_kw = any(p.kind is p.VAR_KEYWORD for p in params.values())
    if "completions" not in params and not takes_var_kw:
        raise ConfigError(f"reward '{name}' must accept a 'completions' argument")
    _check_accepts("constructor parameter" if inspect.isclass(fn) else "parameter", fn, bound, name)
