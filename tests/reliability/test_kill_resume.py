"""SIGKILL at random moments and in the middle of a checkpoint write; ``--resume`` each time; the
final parameters equal those of the uninterrupted run, bit for bit."""

from __future__ import annotations

import random
import re
import time
from pathlib import Path

from .conftest import EPOCHS
from .helpers import (
    assert_same_parameters, checkpoints, final_model, kill, load, logged_steps, no_traceback, run, start,
    step_of, temp_files, text_of, tiny_args, wait_for,
)


def _resumed_step(stderr: str) -> int | None:
    found = re.search(r"resumed from \S+step-(\d+)\.pt \(epoch \d+, step (\d+)\)", stderr)
    if not found:
        return None
    assert int(found.group(1)) == int(found.group(2))
    return int(found.group(2))


def _every_checkpoint_loads(run_dir: Path) -> list[int]:
    """Whatever is under a name resume would pick is a complete checkpoint (it loads and its
    recorded step is its name's)."""
    steps = []
    for path in checkpoints(run_dir):
        state = load(path)
        assert state["run_state"]["step"] == step_of(path)
        steps.append(step_of(path))
    return steps


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted_run(tmp_path: Path, reference_model) -> None:
    """Killed at a random moment after step ``target``; the driver holds the run before step
    target + 6, so on a loaded machine the kill still lands in that window (at worst in the
    pause) and never after the run has ended by itself."""
    rng = random.Random(20240611)  # random moments, the same ones on every run of the suite
    args = tiny_args(tmp_path, epochs=EPOCHS)
    run_dir = tmp_path / "run"
    newest = 0
    for attempt in range(3):
        err = tmp_path / f"stderr-{attempt}.txt"
        target = logged_steps(run_dir) + 2 + rng.randrange(6)  # at least one step past the last kill
        process = start(args + (["--resume"] if attempt else []), faults={"pause_at_step": target + 6}, stderr_path=err)
        wait_for(lambda: logged_steps(run_dir) >= target, process, what=f"step {target}")
        time.sleep(rng.uniform(0.0, 0.05))
        status = kill(process)
        assert status == -9, f"attempt {attempt}: the run ended by itself ({status}): {text_of(err)}"
        if attempt:
            assert _resumed_step(text_of(err)) == newest, text_of(err)  # continued from the last complete one
        steps = _every_checkpoint_loads(run_dir)
        assert steps and steps[0] >= newest
        newest = steps[0]
    result = run(args + ["--resume"])
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    assert _resumed_step(result.stderr) == newest
    assert not temp_files(run_dir), "a temporary file of a killed write was left behind"
    assert not (run_dir / "LOCK").exists()
    assert_same_parameters(final_model(run_dir), reference_model)


def test_sigkill_during_checkpoint_writes_never_leaves_a_partial_checkpoint(tmp_path: Path, reference_model) -> None:
    args = tiny_args(tmp_path, epochs=EPOCHS)
    run_dir = tmp_path / "run"

    # 1. Killed when the third checkpoint is complete under its temporary name, before the rename.
    err = tmp_path / "stderr-1.txt"
    process = start(args, faults={"pause_before_rename": 3, "suffix": ".pt"}, stderr_path=err)
    wait_for(lambda: "FAULT paused" in text_of(err), process, what="the paused checkpoint write")
    assert kill(process) == -9
    temp, final = re.search(r"FAULT paused (\S+) -> (\S+)", text_of(err)).groups()
    assert Path(temp).is_file() and not Path(final).exists() and final.endswith("step-000000003.pt")
    assert _every_checkpoint_loads(run_dir) == [2, 1]

    # 2. Resumed (the temporary file is removed), then killed between the checkpoint's rename and
    #    its checksum's: a complete checkpoint without its .sha256.
    err = tmp_path / "stderr-2.txt"
    process = start(args + ["--resume"], faults={"pause_before_rename": 2, "suffix": ".sha256"}, stderr_path=err)
    wait_for(lambda: "FAULT paused" in text_of(err), process, what="the paused checksum write")
    assert kill(process) == -9
    assert _resumed_step(text_of(err)) == 2
    assert not Path(temp).exists(), "the temporary file of the killed write was not cleaned up"
    newest = checkpoints(run_dir)[0]
    assert step_of(newest) == 4 and not newest.with_name(newest.name + ".sha256").exists()
    assert _every_checkpoint_loads(run_dir) == [4, 3, 2]  # killed before pruning

    # 3. Resumed to the end from that checkpoint.
    result = run(args + ["--resume"])
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    assert _resumed_step(result.stderr) == 4
    assert not temp_files(run_dir)
    assert_same_parameters(final_model(run_dir), reference_model)
