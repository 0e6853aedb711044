"""The one exception the processors raise for bad media: `MediaError`.

Every message reads "<source>: <problem>", where source is the file path, or "<bytes>", "<PIL image>",
"<data URI>", "<frames>" for in-memory inputs, so a failing record can be found from the message alone.
"""

from __future__ import annotations


class MediaError(ValueError):
    """Media that cannot be loaded or used (missing, unreadable, corrupt, empty, or of an unsupported kind)."""

    def __init__(self, source: str, problem: str) -> None:
        self.source = source
        self.problem = problem
        super().__init__(f"{source}: {problem}")

    def __reduce__(self):
        # Exceptions are pickled from their `args` (the one formatted message), which would not match this
        # two-argument constructor: data-loader worker processes could not send the error back.
        return (type(self), (self.source, self.problem))
