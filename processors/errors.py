"""The one exception the processors raise for bad media (`MediaError`), and the file checks both readers share.

Every message reads "<source>: <problem>", where source is the file path, or "<bytes>", "<PIL image>",
"<data URI>", "<frames>" for in-memory inputs, so a failing record can be found from the message alone.
"""

from __future__ import annotations

from pathlib import Path


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


def check_media_file(path: Path, kind: str) -> str:
    """The source name of a media file that exists, is a file and is not empty; MediaError saying which of these
    fails otherwise (`kind`: "image" or "video", for the message)."""
    source = str(path)
    if not path.exists():
        raise MediaError(source, "file not found")
    if not path.is_file():
        raise MediaError(source, f"not a file (expected a{'n' if kind[0] in 'aeiou' else ''} {kind} file)")
    if path.stat().st_size == 0:
        raise MediaError(source, "empty file (0 bytes)")
    return source
