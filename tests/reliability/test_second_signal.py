"""A second SIGTERM/SIGINT ends the process within 2 seconds even in the middle of a step that
takes far longer (here 12 s inside one C++ call, during which Python runs no signal handler), and
the last checkpoint stays intact and loadable."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from .helpers import checkpoints, kill, no_traceback, start, step_of, text_of, tiny_args, wait_for
from selfsup.engine import checkpoint as ckpt

BLOCK_S = 12.0  # the long step: at least 10 s, as the issue asks


@pytest.mark.parametrize("first, second", [(signal.SIGTERM, signal.SIGTERM), (signal.SIGINT, signal.SIGINT)])
def test_second_signal_stops_within_two_seconds_in_a_long_step(tmp_path: Path, first: int, second: int) -> None:
    args = tiny_args(tmp_path, epochs=1)  # a checkpoint after every step
    err = tmp_path / "stderr.txt"
    process = start(args, faults={"block_at_step": 3, "seconds": BLOCK_S}, stderr_path=err)
    try:
        wait_for(lambda: "FAULT blocking" in text_of(err), process, what="the long step")
        blocked_at = time.monotonic()
        process.send_signal(first)
        # The first signal is seen at once (the message comes from the watcher thread while the
        # step still computes); the process goes on with the step.
        wait_for(lambda: "saving a checkpoint after this step" in text_of(err), process, what="the first signal's message")
        assert time.monotonic() - blocked_at < 2.0
        time.sleep(0.3)
        assert process.poll() is None, text_of(err)
        sent = time.monotonic()
        process.send_signal(second)
        status = process.wait(timeout=10)
        took = time.monotonic() - sent
    finally:
        kill(process)
    text = text_of(err)
    assert took < 2.0, f"the second signal took {took:.1f} s to stop the process\n{text}"
    assert time.monotonic() - blocked_at < BLOCK_S, "stopped before the long step would have ended"
    assert "FAULT unblocked" not in text, text
    assert status == 128 + second, (status, text)
    assert "second stop signal" in text and "the last checkpoint is" in text and "--resume" in text, text
    no_traceback(text)
    saved = checkpoints(tmp_path / "run")
    assert step_of(saved[0]) == 3  # steps 0-2 were taken and saved; step 3 never finished
    state = ckpt.load_checkpoint(saved[0])  # verifies its SHA-256: intact
    assert state["run_state"]["step"] == 3
