"""mmreason: multimodal visual-reasoning RL (cold-start SFT, then GRPO with rule rewards) for vision-language models.

The public entry points a task or reward file needs are re-exported here, each resolved lazily on first use:
`import mmreason` stays cheap for the command line (its `--help` loads no data or model code), and `Task` loads the
built-in tasks (and with them the processors), which reward-only code does not need.

The library is grouped by the stage a sample goes through: `data` (records -> samples), `models` (policy loading and
every model-family fact), `tasks`, `rollout` (sampling G completions and scoring them with the rewards), `train`
(SFT, GRPO, RL maths, optimizer step, save/resume), `runs` (run folder, rollout store, inspection, report).
Two earlier module names stay importable as aliases: `mmreason.store` (now `mmreason.runs.store`) and
`mmreason.inspect` (now `mmreason.runs.inspection`, renamed so that it no longer shadows the standard library).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # what the lazy names below resolve to, for type checkers and editors
    from mmreason.data.sample import Sample, SampleContext
    from mmreason.registry import get_reward, get_task, register_reward, register_task, register_tool
    from mmreason.tasks.base import Task

__all__ = [
    "Sample",
    "SampleContext",
    "Task",
    "get_reward",
    "get_task",
    "register_reward",
    "register_task",
    "register_tool",
]
__version__ = "0.1.0"

# public name -> the module defining it (imported on first access)
LAZY_NAMES = {
    "Sample": "mmreason.data.sample",
    "SampleContext": "mmreason.data.sample",
    "Task": "mmreason.tasks.base",
    "get_reward": "mmreason.registry",
    "get_task": "mmreason.registry",
    "register_reward": "mmreason.registry",
    "register_task": "mmreason.registry",
    "register_tool": "mmreason.registry",
}

# old module name -> its home; imported only when the alias is (pandas and matplotlib are not loaded otherwise)
MODULE_ALIASES = {"mmreason.store": "mmreason.runs.store", "mmreason.inspect": "mmreason.runs.inspection"}


class _AliasLoader(importlib.abc.Loader):
    """Makes `import mmreason.store` return the very module object `mmreason.runs.store` (one module, two names)."""

    def create_module(self, spec: Any) -> Any:
        return importlib.import_module(MODULE_ALIASES[spec.name])

    def exec_module(self, module: Any) -> None:  # already executed under its own name
        return None


class _AliasFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname in MODULE_ALIASES:
            return importlib.util.spec_from_loader(fullname, _AliasLoader())
        return None


if not any(isinstance(f, _AliasFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AliasFinder())


def __getattr__(name: str) -> Any:
    if name in LAZY_NAMES:
        return getattr(importlib.import_module(LAZY_NAMES[name]), name)
    if f"mmreason.{name}" in MODULE_ALIASES:
        return importlib.import_module(MODULE_ALIASES[f"mmreason.{name}"])
    raise AttributeError(f"module 'mmreason' has no attribute {name!r}")
