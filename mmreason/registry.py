"""Registries of rewards, tasks and tools, and the loading of users' own task/reward files and plugins.

A registry maps a name to one object; duplicates are rejected and a miss lists the known names (with the
closest ones first), so a typo in a config fails with a useful message instead of a bare KeyError.
"""

from __future__ import annotations

import difflib
import importlib.util
import sys
from collections.abc import Callable, Iterator
from importlib import metadata
from pathlib import Path
from typing import Any, Generic, TypeVar

T = TypeVar("T")

ENTRY_POINT_GROUPS = ("mmreason.tasks", "mmreason.rewards", "mmreason.rollout.tools")


class RegistryError(KeyError):
    """A lookup or registration problem; the message says which name and what is known."""

    def __str__(self) -> str:  # KeyError quotes its message; show it plainly
        return str(self.args[0]) if self.args else ""


class Registry(Generic[T]):
    """Name -> object, with helpful errors."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, obj: T, *, replace: bool = False) -> T:
        if not isinstance(name, str) or not name.strip():
            raise RegistryError(f"{self.kind} name must be a non-empty string, got {name!r}")
        if name in self._items and not replace and self._items[name] is not obj:
            raise RegistryError(f"{self.kind} {name!r} is already registered; pick another name or pass replace=True")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        if name not in self._items:
            _load_builtins()
        if name not in self._items:
            _load_entry_points()
        try:
            return self._items[name]
        except KeyError:
            known = sorted(self._items)
            close = difflib.get_close_matches(name, known, n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise RegistryError(
                f"unknown {self.kind} {name!r}.{hint} Known {self.kind}s: {', '.join(known)}"
            ) from None

    def names(self) -> list[str]:
        _load_builtins()
        _load_entry_points()
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def remove(self, name: str) -> None:
        self._items.pop(name, None)


REWARDS: Registry[Callable[..., list]] = Registry("reward")
TASKS: Registry[Any] = Registry("task")
TOOLS: Registry[Callable[..., Any]] = Registry("tool")


# How a reward is called (mmreason.rollout.scoring): "text" is `fn(completions: list[str], **columns)`; the TRL
# shapes are GRPOTrainer's keyword call (`prompts=`, `completions=`, `completion_ids=`, `trainer_state=`, ...) with
# plain strings ("trl_text") or conversational message lists `[[{"role": "assistant", "content": ...}], ...]`.
REWARD_SHAPES = ("text", "trl_text", "trl_messages")


def register_reward(name: str, *, replace: bool = False, shape: str | None = None) -> Callable[[Callable], Callable]:
    """Decorator: register `fn(completions, **columns) -> list[float | None]` under `name`.

    shape: one of REWARD_SHAPES to fix how the reward is called; None detects it on the first call (plain strings
    first, TRL-style message lists if indexing a string failed).
    """
    if shape is not None and shape not in REWARD_SHAPES:
        raise RegistryError(f"reward {name!r}: shape must be one of {', '.join(REWARD_SHAPES)}, got {shape!r}")

    def deco(fn: Callable) -> Callable:
        REWARDS.add(name, fn, replace=replace)
        fn.reward_name = name  # type: ignore[attr-defined]
        if shape is not None:
            fn.reward_shape = shape  # type: ignore[attr-defined]
        return fn

    return deco


def register_task(name: str, *, replace: bool = False) -> Callable[[type], type]:
    """Class decorator: instantiate the Task subclass and register it under `name`."""

    def deco(cls: type) -> type:
        cls.name = name
        TASKS.add(name, cls(), replace=replace)
        return cls

    return deco


def register_tool(name: str, *, replace: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: register a tool callable under `name` (multi-turn rollouts)."""

    def deco(fn: Callable) -> Callable:
        TOOLS.add(name, fn, replace=replace)
        return fn

    return deco


def get_reward(name: str) -> Callable[..., list]:
    return REWARDS.get(name)


def get_task(name: str) -> Any:
    return TASKS.get(name)


_builtins_loaded = False
_entry_points_loaded = False


def _load_builtins() -> None:
    """Import the built-in rewards and tasks once (they register themselves on import)."""
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True
    importlib.import_module("mmreason.rewards")
    importlib.import_module("mmreason.tasks")


def _load_entry_points() -> None:
    """Import installed plugins that declare an entry point in one of ENTRY_POINT_GROUPS."""
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for group in ENTRY_POINT_GROUPS:
        for ep in metadata.entry_points(group=group):
            ep.load()


def load_user_file(path: str | Path) -> Any:
    """Import a user's Python file by path (its decorators register tasks/rewards); returns the module.

    Only the path the user named is executed: nothing is searched for or imported implicitly.
    """
    p = Path(path).expanduser().resolve()
    if not p.is_file():
        raise FileNotFoundError(f"task/reward file {str(path)!r} does not exist")
    if p.suffix != ".py":
        raise ValueError(f"task/reward file {str(path)!r} must be a .py file")
    _load_builtins()
    mod_name = f"mmreason_user_{p.stem}_{abs(hash(str(p))) % 10**8}"
    if mod_name in sys.modules:
        return sys.modules[mod_name]
    spec = importlib.util.spec_from_file_location(mod_name, p)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[mod_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception:
        del sys.modules[mod_name]
        raise
    return module


def resolve_reward(spec: str) -> Callable[..., list]:
    """`name` -> registered reward; `path/to/file.py:fn` -> that function from the user's file."""
    if ":" in spec and spec.split(":", 1)[0].endswith(".py"):
        path, fn_name = spec.rsplit(":", 1)
        module = load_user_file(path)
        fn = getattr(module, fn_name, None)
        if not callable(fn):
            raise RegistryError(f"{path!r} has no function {fn_name!r}")
        return fn
    return get_reward(spec)
