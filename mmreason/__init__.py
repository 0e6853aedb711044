"""mmreason: multimodal visual-reasoning RL (cold-start SFT, then GRPO with rule rewards) for vision-language models.

The public entry points a task or reward file needs are re-exported here.
"""

from mmreason.registry import get_reward, get_task, register_reward, register_task, register_tool
from mmreason.sample import Sample, SampleContext
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
