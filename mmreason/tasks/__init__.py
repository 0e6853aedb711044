"""The built-in visual tasks; importing this package registers all of them in `mmreason.registry.TASKS`.

grounding, jigsaw, geolocation, classification, counting, multiple_choice, math, temporal_grounding -- one module
each (a `Task` subclass with its prompt, answer format, rewards and weights, metrics and `visualize`), plus `viz`
(shared drawing helpers) and `common` (record field helpers, media loading, and `checked`, which
applies an answer type's ground-truth check from `mmreason.rewards` to a record field).
"""

from mmreason.tasks import (  # noqa: F401  (imported for their @register_task side effect)
    classification,
    counting,
    geolocation,
    grounding,
    jigsaw,
    math,
    multiple_choice,
    temporal_grounding,
)
from mmreason.tasks.base import Task, answer_instruction, wrap_target
from mmreason.tasks.common import RecordError

__all__ = ["Task", "RecordError", "answer_instruction", "wrap_target"]
