"""Who may write a run folder: one process at a time, and run names that stay inside `output_dir`.

A run folder `<output_dir>/<name>` is held through the lock file `<output_dir>/.<name>.lock` (beside the folder, so
that a run refused before it writes anything leaves no folder behind). The lock is an exclusive `flock` on that file,
which the kernel drops when the holder dies however it dies; the file holds the holder's pid, host, start time and
command line, so a refused trainer can name the holder in one line. A lock file left by a holder that is gone (its
pid no longer alive on this host: a SIGKILL, a power cut) is taken over with a warning. A lock file naming another
host is never taken over (its pid means nothing here): the message says which file to delete once that run is gone.

Shared caches under `output_dir` (the tiny model) are built under `file_lock`, a blocking lock of the same kind.
"""

from __future__ import annotations

import atexit
import contextlib
import fcntl
import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmreason.config import ConfigError

log = logging.getLogger(__name__)


class RunFolderError(ConfigError):
    """The run folder cannot be used as asked (held by another trainer, a name leaving `output_dir`, an existing
    run without --resume / --overwrite, no usable checkpoint): one line, exit code 2."""


class RunLocked(RunFolderError):
    """Another process holds the run folder (or lock file); `holder` is what its lock file says, when readable."""

    def __init__(self, message: str, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


def check_run_name(name: str) -> None:
    """A run name is one folder name: no path separators, not absolute, not `.` or `..`, not hidden."""
    bad = (
        not isinstance(name, str)
        or not name.strip()
        or name in (".", "..")
        or name.startswith(".")
        or "/" in name
        or "\\" in name
        or "\0" in name
        or os.path.isabs(name)
    )
    if bad:
        raise RunFolderError(
            f"name={name!r}: a run name is one folder name inside output_dir (no '/', '\\' or leading '.'); "
            "set output_dir for another place"
        )


def lock_file(run_dir: str | Path) -> Path:
    """The lock file of a run folder: `.<name>.lock` beside it."""
    run_dir = Path(run_dir)
    return run_dir.with_name(f".{run_dir.name}.lock")


@dataclass
class Holder:
    """What a lock file says about the process holding it."""

    pid: int
    host: str
    started: float
    proc_start: str = ""  # the pid's start time as the kernel counts it (tells a reused pid from the holder)
    command: str = ""

    @classmethod
    def me(cls) -> Holder:
        pid = os.getpid()
        return cls(pid, socket.gethostname(), time.time(), _proc_start(pid), " ".join(sys.argv)[:300])

    @classmethod
    def parse(cls, text: str) -> Holder | None:
        try:
            data = json.loads(text)
            return cls(int(data["pid"]), str(data["host"]), float(data.get("started", 0.0)),
                       str(data.get("proc_start", "")), str(data.get("command", "")))
        except (ValueError, KeyError, TypeError):
            return None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started)) if self.started else "?"
        return f"pid {self.pid} on host {self.host}, since {since}"

    def alive_here(self) -> bool:
        """Whether the holder still runs: its pid is alive on this host and (where the kernel says) started when
        the holder did. Only meaningful when `host` is this host."""
        if not pid_exists(self.pid):
            return False
        return not self.proc_start or _proc_start(self.pid) in ("", self.proc_start)


class RunLock:
    """An exclusive hold on one lock file by this process (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd: int | None = fd

    def release(self) -> None:
        """Delete the lock file (still ours) and drop the lock; a second call does nothing."""
        if self.fd is None:
            return
        try:
            if _same_file(self.fd, self.path):
                self.path.unlink(missing_ok=True)
        finally:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


_HELD: dict[Path, RunLock] = {}


def hold_run_folder(run_dir: str | Path) -> RunLock:
    """Hold `run_dir` for this process until `release_run_folder` (or exit), or raise RunLocked naming the holder.

    Re-entrant within a process (a library caller may set up the same run twice)."""
    path = lock_file(run_dir).resolve()
    held = _HELD.get(path)
    if held is not None and held.fd is not None:
        return held
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = _acquire(path, what=f"run folder {Path(run_dir)}")
    _HELD[path] = lock
    return lock


def release_run_folder(run_dir: str | Path) -> None:
    lock = _HELD.pop(lock_file(run_dir).resolve(), None)
    if lock is not None:
        lock.release()


@atexit.register
def _release_all() -> None:
    for lock in list(_HELD.values()):
        with contextlib.suppress(OSError):
            lock.release()
    _HELD.clear()


@contextlib.contextmanager
def file_lock(path: str | Path, what: str, timeout_s: float = 1800.0) -> Iterator[None]:
    """Hold the lock file `path` for the block, waiting for another holder (e.g. a process building the same cache)
    for up to `timeout_s`; a stale holder is taken over as in `hold_run_folder`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline, told = time.monotonic() + timeout_s, False
    while True:
        try:
            lock = _acquire(path, what=what)
            break
        except RunLocked as exc:
            if time.monotonic() > deadline:
                raise RunLocked(f"{exc} (waited {timeout_s:.0f} s)", exc.holder) from None
            if not told:
                who = exc.holder.describe() if exc.holder is not None else "another process"
                log.warning("waiting for %s (held by %s)", what, who)
                told = True
            time.sleep(0.2)
    try:
        yield
    finally:
        lock.release()


def _acquire(path: Path, what: str) -> RunLock:
    """Take the flock of `path` and write ourselves into it; RunLocked when another live process holds it."""
    for _ in range(20):  # a holder releasing just then unlinks the file: retry on the new one
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise RunLocked(_held_message(what, holder, path), holder) from None
        if not _same_file(fd, path):  # locked a file its holder unlinked on release
            os.close(fd)
            continue
        try:
            _take_over(fd, path, what)
        except BaseException:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            raise
        return RunLock(path, fd)
    raise RunLocked(f"{what}: could not take {path} (it keeps being replaced)")


def _take_over(fd: int, path: Path, what: str) -> None:
    """With the flock held: refuse a holder that still runs on a filesystem that ignores flock, or one of another
    host; warn about a stale one; then write ourselves into the file."""
    previous = _read_holder(fd)
    me = Holder.me()
    if previous is not None and previous.pid != me.pid:
        if previous.host != me.host:
            raise RunLocked(
                f"{what} is held by {previous.describe()} (another host: whether it runs cannot be checked here); "
                f"if that run is gone, "
                f"delete {path}",
                previous,
            )
        if previous.alive_here():
            raise RunLocked(_held_message(what, previous, path), previous)
        log.warning("%s: taking over the lock of %s, which is no longer running", what, previous.describe())
    text = json.dumps(me.__dict__).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, text, 0)
    os.fsync(fd)


def _held_message(what: str, holder: Holder | None, path: Path) -> str:
    who = holder.describe() if holder is not None else "another process (starting up)"
    return f"{what} is in use by {who}: wait for that run to end or stop it, or use another name (lock: {path})"


def _read_holder(fd: int) -> Holder | None:
    size = os.fstat(fd).st_size
    return Holder.parse(os.pread(fd, size, 0).decode(errors="replace")) if size else None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    own = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (own.st_dev, own.st_ino)


def pid_exists(pid: int) -> bool:
    """Whether a process with this pid lives on this host (one owned by another user counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def _proc_start(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), or '' where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat[stat.rfind(")") + 2:].split()
    return fields[19] if len(fields) > 19 else ""


def describe_lock(path: str | Path) -> dict[str, Any] | None:
    """The holder recorded in a lock file (for tools and tests), or None."""
    try:
        holder = Holder.parse(Path(path).read_text())
    except OSError:
        return None
    return None if holder is None else holder.__dict__
