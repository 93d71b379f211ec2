"""A name -> object registry shared by rewards, rollout backends, models, RL algorithms and their parts
(advantage estimators, policy losses, loss aggregations, value losses, preference losses, KL estimators).

Entries may be objects or lazy ``"module:attr"`` strings, so that heavy optional backends (vLLM)
are imported only when chosen. Duplicates are refused; unknown names list the valid ones. A
registry built with ``allow_imports=True`` also resolves a user's ``package.module:function`` that
was never registered, the way rewards are named in a recipe.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from audiorl.common.errors import AudioRLError, nearest

T = TypeVar("T")


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"`` (or ``"package.module.attr"``)."""
    module_name, sep, attr = path.partition(":")
    if not sep:
        module_name, _, attr = path.rpartition(".")
    if not module_name or not attr:
        raise ImportError(f"'{path}' is not of the form 'module:name'")
    obj: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


class Registry(Generic[T]):
    def __init__(self, kind: str, allow_imports: bool = False):
        self.kind = kind
        self.allow_imports = allow_imports
        self._entries: dict[str, T | str] = {}

    def register(self, name: str, obj: T | str | None = None) -> Callable[[T], T] | T | str:
        """``registry.register("x", obj)``, ``registry.register("x", "pkg.mod:obj")`` or ``@registry.register("x")``."""
        if obj is not None:
            self._add(name, obj)
            return obj

        def decorator(fn: T) -> T:
            self._add(name, fn)
            return fn

        return decorator

    def _add(self, name: str, obj: T | str) -> None:
        existing = self._entries.get(name)
        if existing is not None and existing is not obj:
            raise AudioRLError(f"{self.kind} '{name}' is already registered")
        self._entries[name] = obj

    def get(self, name: str) -> T:
        if name not in self._entries and self.allow_imports and ":" in name:
            try:
                return import_object(name)
            except (ImportError, AttributeError) as exc:
                raise AudioRLError(f"{self.kind} '{name}' could not be imported: {exc}") from None
        if name not in self._entries:
            raise AudioRLError(
                f"unknown {self.kind} '{name}'{nearest(name, self._entries)}; "
                f"registered: {', '.join(sorted(self._entries)) or '(none)'}"
            )
        entry = self._entries[name]
        if isinstance(entry, str):
            entry = import_object(entry)
            self._entries[name] = entry
        return entry  # type: ignore[return-value]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name in self._entries  # a recipe's value may be a list or a mapping

    def check(self, name: str, key: str) -> None:
        """Raise ConfigError naming ``key`` if ``name`` does not resolve (a registered name or, if allowed, module:function)."""
        from audiorl.common.errors import ConfigError

        try:
            self.get(name)
        except AudioRLError as exc:
            raise ConfigError(f"'{key}': {exc}") from None

    def names(self) -> list[str]:
        return sorted(self._entries)
