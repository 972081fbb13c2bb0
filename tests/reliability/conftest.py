"""Fixtures of the reliability suite: one uninterrupted tiny run that the interrupted ones must equal."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from .helpers import assert_same_parameters, checkpoints, final_model, no_traceback, run, step_of, tiny_args

EPOCHS = 4  # 64 steps of the tiny run


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained start to end in one process (read-only: copy it before changing it)."""
    root = tmp_path_factory.mktemp("reference")
    result = run(tiny_args(root, epochs=EPOCHS))
    assert result.returncode == 0, result.stderr
    no_traceback(result.stderr)
    run_dir = root / "run"
    assert [step_of(p) for p in checkpoints(run_dir)] == [64, 63]
    return run_dir


@pytest.fixture(scope="session")
def reference_model(reference_run: Path):
    return final_model(reference_run)


@pytest.fixture
def finished_copy(reference_run: Path, tmp_path: Path) -> Path:
    """A copy of the reference run's directory (same --run-dir layout: tmp_path/run)."""
    target = tmp_path / "run"
    shutil.copytree(reference_run, target)
    return target


__all__ = ["EPOCHS", "assert_same_parameters"]
