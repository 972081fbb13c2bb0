"""Damaged checkpoints are named and skipped; a full disk (a file-size limit, and a real full
filesystem) or an unwritable run directory is a clear error that leaves the previous checkpoint
intact; NaN/Inf losses stop the run naming the step (or are skipped) and never reach a checkpoint."""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from selfsup.engine import checkpoint as ckpt
from selfsup.errors import CheckpointError

from .conftest import EPOCHS
from .helpers import (
    assert_same_parameters, checkpoints, final_model, load, no_traceback, run, run_batch, step_of, temp_files,
    tiny_args,
)


def _damage(path: Path, how: str) -> None:
    data = path.read_bytes()
    sidecar = path.with_name(path.name + ".sha256")
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "truncated, no checksum":
        path.write_bytes(data[: len(data) // 2])
        sidecar.unlink()
    elif how == "one byte flipped":
        middle = len(data) // 2
        path.write_bytes(data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1 :])
    elif how == "empty, no checksum":
        path.write_bytes(b"")
        sidecar.unlink()
    elif how == "wrong checksum":
        sidecar.write_text("0" * 64)
    elif how == "not a checkpoint, no checksum":
        torch.save([1, 2, 3], path)
        sidecar.unlink()
    else:
        raise ValueError(how)


@pytest.mark.parametrize(
    "how, message",
    [
        ("truncated", "is corrupted (its SHA-256 does not match"),
        ("truncated, no checksum", "cannot be read (truncated or corrupted?)"),
        ("one byte flipped", "is corrupted (its SHA-256 does not match"),
        ("empty, no checksum", "cannot be read (truncated or corrupted?)"),
        ("wrong checksum", "is corrupted (its SHA-256 does not match"),
        ("not a checkpoint, no checksum", "is not a selfsup checkpoint"),
    ],
)
def test_a_damaged_checkpoint_is_detected_and_named(finished_copy: Path, how: str, message: str) -> None:
    newest = checkpoints(finished_copy)[0]
    _damage(newest, how)
    with pytest.raises(CheckpointError, match=re.escape(message)) as error:
        ckpt.load_checkpoint(newest)
    assert str(newest) in str(error.value)
    path, state = ckpt.latest_good_checkpoint(finished_copy)
    assert path == checkpoints(finished_copy)[1] and state["run_state"]["step"] == 63


def test_resume_falls_back_to_the_previous_good_checkpoint(finished_copy: Path, reference_model) -> None:
    newest = checkpoints(finished_copy)[0]
    _damage(newest, "truncated")
    result = run(tiny_args(finished_copy.parent, epochs=EPOCHS) + ["--resume"])
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    assert f"checkpoint '{newest}' is corrupted" in result.stderr
    assert "renamed the damaged step-000000064.pt to step-000000064.pt.damaged" in result.stderr
    assert "Falling back" in result.stderr
    assert "step-000000063.pt (epoch 3, step 63)" in result.stderr
    assert newest.with_name(newest.name + ".damaged").is_file(), "the damaged file is kept aside for inspection"
    assert_same_parameters(final_model(finished_copy), reference_model)  # step 63 -> 64 again, same result


def test_refusals_before_training_existing_run_all_damaged_unwritable_run_dir_and_eval(reference_run: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken" / "run"
    shutil.copytree(reference_run, broken)
    for path in checkpoints(broken):
        _damage(path, "truncated")
    damaged = checkpoints(broken)[0]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder")
    cases = {
        "a new run into a directory that holds one": tiny_args(broken.parent, epochs=EPOCHS),
        "all damaged": tiny_args(broken.parent, epochs=EPOCHS) + ["--resume"],
        "run dir under a file": tiny_args(a_file, epochs=EPOCHS),
        "eval a damaged file": ["eval", "knn", str(damaged), "--device", "cpu"],
        "eval a run whose newest is damaged": ["eval", "knn", str(broken), "--device", "cpu"],
    }
    results = run_batch(cases)
    for name, result in results.items():
        assert result["escaped"] is None, f"{name}: {result['escaped']}"
        assert result["status"] == 2, f"{name}: {result}"
    assert "already holds a run. Continue it with --resume" in results["a new run into a directory that holds one"]["stderr"]
    assert "none of the 2 checkpoint(s) in" in results["all damaged"]["stderr"]
    assert f"cannot write the run directory '{a_file / 'run'}': Not a directory" in results["run dir under a file"]["stderr"]
    for name in ("eval a damaged file", "eval a run whose newest is damaged"):
        assert f"checkpoint '{damaged}' is corrupted" in results[name]["stderr"], results[name]
    assert [step_of(p) for p in checkpoints(broken)] == [64, 63], "a refused resume must not move anything"


def test_disk_full_while_writing_a_checkpoint_is_a_clear_error_and_keeps_the_previous_one(
    finished_copy: Path, reference_model
) -> None:
    """The kernel refuses to grow any file of the process past 100 kB (RLIMIT_FSIZE, as a full
    quota would): the first checkpoint write of the resumed run fails."""
    size = checkpoints(finished_copy)[0].stat().st_size
    limit = 100_000
    assert size > limit > 20_000, "the checkpoint must be larger than the limit, the logs smaller"

    def small_disk() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    args = tiny_args(finished_copy.parent, epochs=EPOCHS + 1) + ["--resume"]  # one more epoch to write
    result = run(args, preexec_fn=small_disk)
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    assert "could not write checkpoint" in result.stderr and "step-000000065.pt': File too large" in result.stderr
    assert "The previous checkpoint is intact" in result.stderr
    assert [step_of(p) for p in checkpoints(finished_copy)] == [64, 63]
    assert_same_parameters(final_model(finished_copy), reference_model)
    assert not temp_files(finished_copy) and not (finished_copy / "LOCK").exists()


def test_a_real_full_disk_enospc_keeps_the_previous_checkpoint(reference_run: Path, tmp_path: Path, reference_model) -> None:
    """A real ENOSPC, not a stand-in: the run directory lives on a small tmpfs that this test
    mounts (as root; CI runs as root), filled until less room is left than one checkpoint but
    plenty for a step's logs. The resumed run's first checkpoint write fails with "No space left
    on device"; the previous checkpoints are intact and equal the uninterrupted run's."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(disk)], capture_output=True, text=True)
    assert mounted.returncode == 0, (
        "this test mounts a small tmpfs to fill it (mount -t tmpfs, which needs root; CI runs as root): "
        f"mount exited {mounted.returncode}: {mounted.stderr.strip() or mounted.stdout.strip()}"
    )
    try:
        run_dir = disk / "run"
        shutil.copytree(reference_run, run_dir)
        checkpoint_size = checkpoints(run_dir)[0].stat().st_size
        room = checkpoint_size // 2  # logs and config.yaml of the step before the write need a few kB
        assert room > 40_000, "a checkpoint must be much larger than what the run writes besides it"
        stats = os.statvfs(disk)
        with open(disk / "filler", "wb") as handle:
            handle.write(b"\0" * (stats.f_bavail * stats.f_frsize - room))
        result = run(tiny_args(disk, epochs=EPOCHS + 1) + ["--resume"])  # one more epoch to write
        assert result.returncode == 2, result.stderr
        no_traceback(result.stderr)
        assert "could not write checkpoint" in result.stderr, result.stderr
        assert "step-000000065.pt': No space left on device" in result.stderr, result.stderr
        assert "The previous checkpoint is intact" in result.stderr
        assert [step_of(p) for p in checkpoints(run_dir)] == [64, 63]
        assert_same_parameters(final_model(run_dir), reference_model)
        assert not temp_files(run_dir) and not (run_dir / "LOCK").exists()
    finally:
        unmounted = subprocess.run(["umount", str(disk)], capture_output=True, text=True)
    assert unmounted.returncode == 0, unmounted.stderr


def _finite(state: dict) -> bool:
    return all(bool(torch.isfinite(v).all()) for v in state["model"].values() if v.is_floating_point())


def test_injected_nan_stops_naming_the_step_and_inf_is_skipped_with_skip_nonfinite(tmp_path: Path) -> None:
    args = tiny_args(tmp_path, epochs=2, checkpoint_every_steps=0)  # checkpoints at steps 16 and 32
    result = run(args, faults={"nonfinite_at_step": 20, "value": "nan"})
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    assert "the loss became nan at step 20 (epoch 1)" in result.stderr
    assert f"the last good checkpoint is {tmp_path / 'run' / 'checkpoints' / 'step-000000016.pt'}" in result.stderr
    saved = checkpoints(tmp_path / "run")
    assert [step_of(p) for p in saved] == [16] and _finite(load(saved[0]))

    skipping = tiny_args(tmp_path, name="skip", epochs=2, checkpoint_every_steps=0, skip_nonfinite="true")
    result = run(skipping, faults={"nonfinite_at_step": 20, "value": "inf"})
    assert result.returncode == 0, result.stderr
    summary = json.loads((tmp_path / "skip" / "summary.json").read_text())
    assert summary["skipped_steps"] == 1 and summary["steps"] == 32
    assert _finite(load(checkpoints(tmp_path / "skip")[0]))


def test_a_diverging_run_stops_and_never_checkpoints_nonfinite_parameters(tmp_path: Path) -> None:
    """No injection: SGD at lr 1e30 really diverges within a few steps (at step 2)."""
    result = run(tiny_args(tmp_path, epochs=1, optimizer="sgd", lr="1e30"))
    assert result.returncode == 2, result.stderr
    no_traceback(result.stderr)
    stopped = re.search(r"the loss became (?:nan|inf|-inf) at step (\d+)|parameters became NaN/Inf by step (\d+)", result.stderr)
    assert stopped, result.stderr
    step = int(stopped.group(1) or stopped.group(2))
    saved = checkpoints(tmp_path / "run")
    # A checkpoint every step (tiny_args), kept 2: the newest finite ones up to the step that
    # diverged (step 2 when measured, so there are checkpoints to check: never an empty all()).
    steps = [step_of(p) for p in saved]
    assert step >= 1 and steps, result.stderr
    assert steps[0] in (step - 1, step) and steps == [steps[0] - i for i in range(min(2, steps[0]))], steps
    assert all(_finite(load(p)) for p in saved)
