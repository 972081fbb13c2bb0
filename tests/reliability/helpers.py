"""Run ``selfsup`` as real processes on tiny, deterministic CPU trainings, and read what they leave.

Every training here is SimCLR with an 8-channel tiny backbone on 256 of the built-in digits at
16 px, batch 16: 16 steps per epoch, a few milliseconds per step, so a run is mostly process
start-up. Each process uses one CPU thread, so two runs of the same config do the same floating-
point work and a resumed run can be compared bit for bit with an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
DRIVER = Path(__file__).with_name("driver.py")
STEPS_PER_EPOCH = 16  # train_subset 256 / batch 16
START_TIMEOUT_S = 240.0  # start-up on a heavily loaded machine took up to ~15 s; leave a wide margin


def env(**extra: str) -> dict[str, str]:
    out = dict(os.environ)
    out.update(
        OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SELFSUP_OFFLINE="1", PYTHONUNBUFFERED="1",
        PYTHONPATH=str(ROOT) + os.pathsep + out.get("PYTHONPATH", ""),
    )
    out.update(extra)
    return out


def tiny_args(run_dir: Path, name: str = "run", epochs: int = 4, **overrides: Any) -> list[str]:
    """``selfsup train`` arguments of the tiny run; ``overrides`` become key=value."""
    values = {
        "train_subset": 256, "eval_every": 0, "progress": "false", "log_every": 1,
        "backbone.width": 8, "method.proj_hidden_dim": 32, "method.proj_output_dim": 16,
        "checkpoint_every_steps": 1, "keep_checkpoints": 2,
    }
    values.update(overrides)
    return [
        "train", "--data", "digits", "--backbone", "tiny", "--image-size", "16", "--batch-size", "16",
        "--epochs", str(epochs), "--device", "cpu", "--seed", "0", "--run-dir", str(run_dir), "--name", name,
        *[f"{k}={v}" for k, v in values.items()],
    ]


def command(args: list[str], driver: bool = False) -> list[str]:
    return [PYTHON, str(DRIVER), *args] if driver else [PYTHON, "-m", "selfsup", *args]


def run(args: list[str], faults: dict[str, Any] | None = None, timeout: float = 600, cwd: Path | None = None,
        preexec_fn: Callable[[], None] | None = None) -> subprocess.CompletedProcess:
    """Run ``selfsup ARGS`` to the end (through the fault-injecting driver when ``faults``)."""
    extra = {"SELFSUP_FAULTS": json.dumps(faults)} if faults else {}
    return subprocess.run(
        command(args, driver=bool(faults)), env=env(**extra), capture_output=True, text=True,
        timeout=timeout, cwd=cwd or ROOT, preexec_fn=preexec_fn,
    )


def start(args: list[str], faults: dict[str, Any] | None = None, stderr_path: Path | None = None) -> subprocess.Popen:
    """Start ``selfsup ARGS`` in the background; stderr goes to ``stderr_path`` (read it with ``text_of``)."""
    extra = {"SELFSUP_FAULTS": json.dumps(faults)} if faults else {}
    handle = open(stderr_path, "w") if stderr_path else subprocess.DEVNULL
    return subprocess.Popen(
        command(args, driver=bool(faults)), env=env(**extra), stdout=subprocess.DEVNULL, stderr=handle, cwd=ROOT
    )


def text_of(path: Path) -> str:
    return path.read_text() if path.is_file() else ""


def wait_for(predicate: Callable[[], bool], process: subprocess.Popen | None = None, timeout: float = START_TIMEOUT_S,
             what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process ended (status {process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def logged_steps(run: Path) -> int:
    """The newest step in metrics.jsonl (one line per step with log_every=1); 0 if none yet."""
    path = run / "metrics.jsonl"
    if not path.is_file():
        return 0
    steps = [0]
    for line in path.read_text().splitlines():
        try:
            steps.append(int(json.loads(line).get("step", 0)))
        except (ValueError, json.JSONDecodeError):
            continue  # a line cut by a kill mid-write
    return max(steps)


def kill(process: subprocess.Popen, signum: int = signal.SIGKILL, timeout: float = 120) -> int:
    process.send_signal(signum)
    return process.wait(timeout=timeout)


def checkpoints(run: Path) -> list[Path]:
    from selfsup.engine import checkpoint as ckpt

    return ckpt.list_checkpoints(run)


def step_of(path: Path) -> int:
    return int(path.name.split("-")[1].split(".")[0])


def load(path: Path) -> dict[str, Any]:
    from selfsup.engine import checkpoint as ckpt

    return ckpt.load_checkpoint(path)


def final_model(run: Path) -> dict[str, torch.Tensor]:
    return load(checkpoints(run)[0])["model"]


def assert_same_parameters(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"parameters differ from the uninterrupted run: {different[:5]}"


def temp_files(run: Path) -> list[Path]:
    return [p for p in run.rglob(".*") if ".tmp-" in p.name]


def no_traceback(text: str) -> None:
    assert "Traceback" not in text, text


def run_batch(cases: dict[str, list[str]], cwd: Path | None = None, timeout: float = 900) -> dict[str, dict[str, Any]]:
    """Run each ``selfsup`` argv of ``cases`` in one process (cli_batch.py); returns per case
    ``status``, ``stdout``, ``stderr`` and ``escaped`` (a traceback that escaped ``main``)."""
    result = subprocess.run(
        [PYTHON, str(Path(__file__).with_name("cli_batch.py"))], input=json.dumps(cases), env=env(),
        capture_output=True, text=True, timeout=timeout, cwd=cwd or ROOT,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)
