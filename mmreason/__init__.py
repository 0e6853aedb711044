"""mmreason: multimodal visual-reasoning RL (cold-start SFT, then GRPO with rule rewards) for vision-language models.

The public entry points a task or reward file needs are re-exported here. `Task` is resolved lazily: importing it
loads the built-in tasks (and with them the processors), which reward-only code does not need.
"""

from typing import Any

from mmreason.registry import get_reward, get_task, register_reward, register_task, register_tool
from mmreason.sample import Sample, SampleContext

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


def __getattr__(name: str) -> Any:
    if name == "Task":
        from mmreason.tasks.base import Task

        return Task
    raise AttributeError(f"module 'mmreason' has no attribute {name!r}")
