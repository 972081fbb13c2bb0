"""One training process per run directory: a ``LOCK`` file held while the run trains.

Two processes writing the same run would interleave checkpoints and logs and lose work. The lock
is an ``flock`` on ``<run>/LOCK``, which the kernel drops the moment its process ends (even by
SIGKILL), so a lock left by a dead process is never mistaken for a live one; the file names the
holder (pid, host, start time) for the message. Where ``flock`` is unavailable (Windows, some
network filesystems) the pid in the file is checked instead: a lock whose process is no longer
running is stale and taken over, with a note.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
import time
from contextlib import suppress
from pathlib import Path

from ..errors import SelfsupError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = "LOCK"
# DataLoader workers forked by a killed process keep its lock for a moment (they share the open
# file); a lock whose recorded process is dead is waited on for this long before giving up.
ORPHAN_WAIT_S = 10.0


class RunInUseError(SelfsupError):
    """Another live process holds the run directory's lock."""


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except PermissionError:  # exists, owned by someone else
        return True
    except OSError:  # ProcessLookupError: no such process
        return False
    return True


def read_holder(path: str | Path) -> dict[str, str]:
    """The ``key=value`` fields of a lock file (pid, host, started); empty if unreadable."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return {}
    return dict(part.split("=", 1) for part in text.split() if "=" in part)


def _describe(holder: dict[str, str]) -> str:
    if not holder.get("pid"):
        return "a process that did not record itself"
    where = f" on {holder['host']}" if holder.get("host") else ""
    since = f", started {holder['started']}" if holder.get("started") else ""
    return f"pid {holder['pid']}{where}{since}"


def _holder_dead(holder: dict[str, str]) -> bool:
    """True only when the recorded process is certainly gone (same host, pid not running)."""
    try:
        pid = int(holder.get("pid", ""))
    except ValueError:
        return False
    return holder.get("host") == socket.gethostname() and not pid_alive(pid)


class RunLock:
    """``acquire()`` or raise :class:`RunInUseError`; ``release()`` removes the file."""

    def __init__(self, run_dir: str | Path) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None

    def _try_lock(self, fd: int) -> bool:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False
            except OSError as exc:
                if exc.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                    raise
        # No flock here: trust the pid in the file.
        holder = read_holder(self.path)
        if not holder.get("pid") or (holder["pid"] == str(os.getpid()) and holder.get("host") == socket.gethostname()):
            return True
        return _holder_dead(holder)  # another host's process cannot be checked: treat it as live

    def acquire(self) -> None:
        deadline = time.monotonic() + ORPHAN_WAIT_S
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
            try:
                locked = self._try_lock(fd)
            except BaseException:
                os.close(fd)
                raise
            if not locked:
                os.close(fd)
                holder = read_holder(self.path)
                if _holder_dead(holder) and time.monotonic() < deadline:
                    time.sleep(0.2)  # leftover children of a dead holder; they exit shortly
                    continue
                raise RunInUseError(
                    f"run directory '{self.run_dir}' is in use by another selfsup process ({_describe(holder)}; "
                    f"see {self.path}). Two processes must not train one run: wait for it to finish, stop it "
                    "(Ctrl-C or SIGTERM saves a checkpoint first), or choose another --name."
                )
            # The previous holder may have removed the file between our open and our lock: then we
            # locked a deleted file, and must lock the one now at the path instead.
            with suppress(FileNotFoundError):
                if os.path.samestat(os.fstat(fd), os.stat(self.path)):
                    break
            os.close(fd)
        previous = read_holder(self.path)
        if previous.get("pid") and previous.get("pid") != str(os.getpid()):
            print(
                f"selfsup: taking over a stale lock in '{self.run_dir}' left by {_describe(previous)}, "
                "which is no longer running.",
                file=sys.stderr,
            )
        text = f"pid={os.getpid()} host={socket.gethostname()} started={time.strftime('%Y-%m-%dT%H:%M:%S')}\n"
        os.ftruncate(fd, 0)
        os.pwrite(fd, text.encode(), 0)
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with suppress(OSError):
                self.path.unlink()  # while still locked, so nobody can lock this file and think it current
            os.close(fd)

    def __del__(self) -> None:  # a Trainer dropped without fit(): free the run directory
        with suppress(Exception):
            self.release()
