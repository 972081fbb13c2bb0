"""SIGTERM/SIGINT save a checkpoint at the current step and exit 143/130; resume continues from
that step. One process per run directory: a second refuses while the first lives, with or without
--resume; a lock left by a killed process is detected as stale and taken over. (A new run into a
directory that holds a finished one is refused in test_damage_disk_nonfinite.py.)"""

from __future__ import annotations

import re
import signal
from pathlib import Path

from .conftest import EPOCHS
from .helpers import (
    STEPS_PER_EPOCH, assert_same_parameters, checkpoints, final_model, kill, no_traceback, run, run_batch, start, step_of,
    text_of, tiny_args, wait_for,
)
from selfsup.engine.lock import read_holder


def _stopped_at(stderr: str, name: str) -> int:
    found = re.search(rf"stopped by {name} at step (\d+) \(epoch \d+\); checkpoint saved: (\S+step-(\d+)\.pt)", stderr)
    assert found, stderr
    assert int(found.group(1)) == int(found.group(3))
    assert "--resume" in stderr
    return int(found.group(1))


def test_sigterm_then_sigint_checkpoint_the_current_step_and_resume_continues_there(tmp_path: Path, reference_model) -> None:
    """Each signal is sent while the run is held before a known step (the driver's pause hook),
    so the run cannot finish first on a loaded machine, and the step it stops at is exact: the
    signal arrives before step target + 1, which completes, then the checkpoint is saved."""
    # Checkpoints only at epoch ends, so the ones the signals write are visibly theirs.
    args = tiny_args(tmp_path, epochs=EPOCHS, checkpoint_every_steps=0)
    run_dir = tmp_path / "run"
    stopped = 0
    for attempt, (signum, name, status) in enumerate([(signal.SIGTERM, "SIGTERM", 143), (signal.SIGINT, "SIGINT", 130)]):
        err = tmp_path / f"stderr-{name}.txt"
        target = stopped + 3 + attempt * STEPS_PER_EPOCH // 2
        process = start(args + (["--resume"] if attempt else []), faults={"pause_at_step": target}, stderr_path=err)
        wait_for(lambda: f"FAULT paused at step {target}" in text_of(err), process, what=f"the pause at step {target}")
        assert kill(process, signum) == status, text_of(err)
        text = text_of(err)
        no_traceback(text)
        if attempt:
            assert f"resumed from {run_dir / 'checkpoints'}/step-{stopped:09d}.pt" in text, text
        stopped = _stopped_at(text, name)
        assert stopped == target + 1 and step_of(checkpoints(run_dir)[0]) == stopped
    result = run(args + ["--resume"])
    assert result.returncode == 0, result.stderr
    # (A stop on an epoch's last step is saved as that epoch's end: the resumed run then does the
    # epoch's end-of-epoch work, so the epoch it prints may be stopped // STEPS_PER_EPOCH - 1.)
    assert re.search(rf"step-{stopped:09d}\.pt \(epoch \d+, step {stopped}\)", result.stderr), result.stderr
    assert_same_parameters(final_model(run_dir), reference_model)


def test_second_process_refuses_a_locked_run_and_a_stale_lock_is_taken_over(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, epochs=400)  # runs until stopped
    run_dir = tmp_path / "run"
    # The first run trains two steps, then holds still (lock held) while writing its third
    # checkpoint, so the refused processes below do not compete with it for the CPU.
    first_err = tmp_path / "first.txt"
    first = start(args, faults={"pause_before_rename": 3}, stderr_path=first_err)
    try:
        wait_for(lambda: "FAULT paused" in text_of(first_err), first, what="the first run to train")
        assert read_holder(run_dir / "LOCK")["pid"] == str(first.pid)
        refused = run_batch({"new run": args, "resume": args + ["--resume"]})  # both in one process
        for name, result in refused.items():
            assert result["status"] == 2 and result["escaped"] is None, f"{name}: {result}"
            assert f"is in use by another selfsup process (pid {first.pid} on" in result["stderr"], result["stderr"]
        assert first.poll() is None, "the refused processes must not disturb the running one"
    finally:
        kill(first)
    # SIGKILL left the LOCK file behind, naming a process that no longer exists.
    assert read_holder(run_dir / "LOCK")["pid"] == str(first.pid)
    err = tmp_path / "resumed.txt"
    newest = step_of(checkpoints(run_dir)[0])
    assert newest == 2  # the third checkpoint was never renamed into place
    resumed = start(args + ["--resume"], faults={"pause_at_step": newest + 2}, stderr_path=err)
    wait_for(lambda: f"FAULT paused at step {newest + 2}" in text_of(err), resumed, what="the resumed run")
    assert kill(resumed, signal.SIGTERM) == 143
    text = text_of(err)
    assert f"resumed from {run_dir / 'checkpoints'}/step-{newest:09d}.pt" in text, text
    assert _stopped_at(text, "SIGTERM") == newest + 3
    assert f"taking over a stale lock in '{run_dir}' left by pid {first.pid}" in text, text
    assert not (run_dir / "LOCK").exists(), "the lock is released when the run stops"
