"""Stop signals during training: the first SIGINT/SIGTERM asks for a checkpoint after the current
step; a second one ends the process at once, even in the middle of a long step.

Python runs a signal handler only between bytecodes of the main thread: while the main thread is
inside one long C++ call (a convolution's backward on a large batch), a handler that raises waits
for that call to return, which can take minutes. So the handlers here do nothing themselves;
the C-level handler Python installs writes each signal's number to a wakeup file descriptor
(``signal.set_wakeup_fd``) the moment it arrives, and a watcher thread reading it acts at once
(PyTorch releases the GIL inside its operators, so the thread runs while the step computes). On
the second request it prints where the last checkpoint is and ends the process with
``os._exit(128 + signum)``. Checkpoints are written to a temporary file and renamed (see
``checkpoint.py``), so the newest complete checkpoint stays intact whatever the moment; a partial
temporary file is removed at the next start.

Under torchrun a worker may receive the same signal twice in quick succession (from the terminal
and passed on by the launcher): the same signal again within :data:`DUPLICATE_WINDOW_S` is that
copy, not a second request.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from contextlib import suppress
from typing import Any, Callable

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
DUPLICATE_WINDOW_S = 5.0


class StopSignals:
    """Install with :meth:`install` (main thread only), read :attr:`signum`, undo with :meth:`restore`.

    With ``announce`` (rank 0) each request is announced on stderr; ``where_last()`` says where the
    newest checkpoint is ("the last checkpoint is ...") in the message before an immediate stop."""

    def __init__(self, world_size: int, announce: bool, where_last: Callable[[], str]) -> None:
        self.world_size, self.announce, self.where_last = world_size, announce, where_last
        self.signum: int | None = None
        self.time = 0.0
        self._count = 0  # stop signals delivered (torchrun's copies not counted)
        self._previous: dict[int, Any] = {}
        self._old_wakeup: int | None = None
        self._sockets: tuple[socket.socket, socket.socket] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    # -- setup ---------------------------------------------------------------------------------
    def install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return  # signals reach the main thread only; a trainer run elsewhere cannot catch them
        with suppress(OSError):  # no socket pair: the handler decides, between bytecodes
            reader, writer = socket.socketpair()
            try:
                writer.setblocking(False)
                self._old_wakeup = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
                self._sockets = (reader, writer)
            except (ValueError, OSError):  # no wakeup descriptor here: the handler decides, between bytecodes
                reader.close()
                writer.close()
        for signum in STOP_SIGNALS:
            with suppress(ValueError, OSError):
                self._previous[signum] = signal.signal(signum, self._handler)
        if self._sockets is not None:
            self._thread = threading.Thread(
                target=self._watch, args=(self._sockets[0],), name="selfsup-stop-signals", daemon=True
            )
            self._thread.start()

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous.clear()
        if self._sockets is not None:
            with suppress(ValueError, OSError):
                signal.set_wakeup_fd(self._old_wakeup if self._old_wakeup is not None else -1)
            (reader, writer), self._sockets = self._sockets, None
            with suppress(OSError):
                reader.shutdown(socket.SHUT_RDWR)  # wakes the watcher's recv
            if self._thread is not None:
                self._thread.join(timeout=1.0)
            reader.close()
            writer.close()

    # -- receiving -----------------------------------------------------------------------------
    def _handler(self, signum: int, frame: Any) -> None:
        # No watcher: count here (only between bytecodes). Else the watcher counts; recording the
        # first request here as well means the loop sees it at its next check even if the watcher
        # thread has not run yet.
        (self._received if self._sockets is None else self._first)(signum)

    def _watch(self, reader: socket.socket) -> None:
        while True:
            try:
                data = reader.recv(64)
            except OSError:
                return
            if not data:
                return
            for number in data:
                if number in STOP_SIGNALS:
                    self._received(number)

    def _first(self, signum: int) -> None:
        with self._lock:
            if self.signum is not None:
                return
            self.signum, self.time = signum, time.monotonic()
        if self.announce:
            os.write(2, (
                f"\nselfsup: {signal.Signals(signum).name} received: saving a checkpoint after this step, then stopping "
                "(send it again to stop at once).\n"
            ).encode())

    def _received(self, signum: int) -> None:
        """One delivered stop signal: the first asks for a stop after the step, the second stops now."""
        with self._lock:
            # torchrun passes on the signal it received, which the terminal may already have sent
            # to the workers: the same signal again at once is that copy, not a second request.
            if (self._count and self.world_size > 1 and signum == self.signum
                    and time.monotonic() - self.time < DUPLICATE_WINDOW_S):
                return
            self._count += 1
            second = self._count > 1
        if second:
            self._stop_now(signum)
        self._first(signum)

    def _stop_now(self, signum: int) -> None:
        if self.announce:
            try:
                where = self.where_last()
            except Exception:  # noqa: BLE001 - never let the message keep the process alive
                where = "no checkpoint had been written yet"
            name = signal.Signals(signum).name
            os.write(2, f"\nselfsup: second stop signal ({name}): stopping now, in the middle of the step; {where}. "
                        "Continue with --resume.\n".encode())
        os._exit(128 + signum)
