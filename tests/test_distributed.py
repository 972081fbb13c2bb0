"""Distributed training equals one process (issue 7), for every registered method.

One group of 2 real processes (torch.multiprocessing, gloo on the CPU, joined through torchrun's
environment variables as ``torchrun -m selfsup train`` joins) trains every method for 2 optimizer
steps with the real engine (data slicing, augmentation, DDP, synchronized or per-process BN,
hooks) at a global batch of 16, i.e. 8 images per process. Each test then runs the same
configuration on one process with batch 16 and compares, from the checkpoints, every parameter and
every buffer (queues, memory banks, centres, EMA targets, BN statistics), the logged loss, and a
run resumed on one process from the 2-process checkpoint.

Each method runs as its paper runs on several GPUs: BN synchronized where the paper does (SimCLR,
BYOL, SimSiam, MoCo v3, SwAV, DINO), per process where it does not (MoCo v1/v2, whose shuffling BN
depends on it, InstDisc, CMC); CPC and MAE (a ViT) have no BN. Barlow Twins' standardization and
cross-correlation and VICReg's variance and covariance are statistics of the batch: they must be
the global batch's, which these tests check too. The one-process reference of a per-process-BN
method normalizes each half of the batch on its own (``emulate_per_process_bn``), exactly what
two processes do. Two steps, so that the after-step hooks (queue, bank, centre, EMA, prototypes)
have acted before the second forward reads them. Randomness: the augmentation draws its
parameters for the global batch on every rank (``Recipe(shard=...)``); MoCo's shuffle permutation
and InstDisc/CMC's noise indices are drawn for the global batch from the default generator, whose
state is the same on every rank, and on one process.

Tolerance, float32: ``|a - b| <= 1e-6 + 1e-5 |b| + 1e-2 max|b - b0|`` per element, ``b0`` the
tensor's value before training (the last term: 1% of the largest change the two steps made to that
tensor, for the optimizers that normalize the step, AdamW and LARS, where a near-zero gradient
element's rounding can move its update by a visible fraction of the step; the negative control
below misses even this bound). Buffers (queues, memory banks, DINO's centre, BN statistics) are
written by the forward and the hooks, never by an optimizer, and a queue or bank overwritten in
full could differ by 0.01 per element under the last term: for them the last term is
``1e-4 max|b|`` instead (``1e-3 max|b|`` after the resume's two more steps), what reordered
float32 sums, and the weights they were computed from (equal within the tolerance above),
explain. Measured (channels_last convolutions on the CPU, whose kernels for 8 and 16 images sum
in different orders), the largest excess over ``1e-6 + 1e-5 |b|``: after two steps 5.9e-6 max|b|
(SwAV's queue, filled from LARS-updated weights), 17 times inside; after the resume 1.6e-4
max|b| (SwAV's queue again; every other buffer under 2e-5), 6 times inside. The memory banks and
MoCo's queues stay within ``1e-6 + 1e-5 |b|`` itself. Note that AdamW and LARS are nearly invariant to a gradient's scale,
so for them a gradient off by the world size is caught by the SGD methods and the logged loss. The two runs add the same numbers
in different orders (a sum over 16 rows vs two sums of 8 all-reduced, BN statistics from two
partial sums, DDP's averaged gradient); each such difference is a few float32 ulps (1.2e-7
relative) and two steps of SGD/LARS/AdamW move them by less than 1e-5 of the values, while a
semantic slip (a gradient scaled by the world size, local negatives, per-process statistics where
global ones belong) moves them by 1e-3 to 1: the negative control below (SimCLR with per-process
BN against global BN) misses by orders of magnitude.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

from selfsup import methods
from selfsup.engine import TrainConfig, Trainer
from selfsup.engine import checkpoint as ckpt
from selfsup.engine import distributed

from .conftest import shared_data_dir

ALL = methods.available()
WORLD = 2
BATCH = 16  # global: 8 per process (MoCo's 8 shuffling-BN groups need 2 keys each)
STEPS = 2
RTOL, ATOL, ETA = 1e-5, 1e-6, 1e-2  # see the module docstring
BUFFER_ETA, BUFFER_ETA_RESUMED = 1e-4, 1e-3  # buffers: after the 2 steps, after the resume (4 steps)

# Small heads, queues and banks, so that a step takes milliseconds; every other field is the
# paper's default (a registered method missing here runs with its defaults).
METHOD_ARGS: dict[str, dict[str, Any]] = {
    "simclr": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "moco_v1": {"queue_size": 64, "embed_dim": 16},
    "moco_v2": {"queue_size": 64, "embed_dim": 16, "proj_hidden_dim": 32},
    "moco_v3": {"proj_hidden_dim": 32, "pred_hidden_dim": 32, "embed_dim": 16},
    "instdisc": {"num_noise": 32, "embedding_dim": 16},
    "cmc": {"num_negatives": 32, "embedding_dim": 16},
    "byol": {"proj_hidden_dim": 32, "pred_hidden_dim": 32, "proj_output_dim": 16},
    "simsiam": {"proj_hidden_dim": 32, "proj_output_dim": 32, "pred_hidden_dim": 16},
    # The queue (one global batch long) is filled by step 1 and read by step 2; prototypes and the
    # last layer train from the first step, so that their updates are compared too.
    "swav": {"num_prototypes": 16, "proj_hidden_dim": 32, "proj_output_dim": 16, "queue_length": BATCH,
             "queue_start_epoch": 0.0, "freeze_prototypes_epochs": 0.0},
    "dino": {"out_dim": 64, "hidden_dim": 32, "bottleneck_dim": 16, "freeze_last_layer_epochs": 0.0},
    "cpc": {"prediction_steps": 2, "context_blocks": 2},
    "barlow_twins": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "vicreg": {"proj_hidden_dim": 32, "proj_output_dim": 16},
    "mae": {"decoder_dim": 16, "decoder_depth": 1, "decoder_heads": 2},
}
# The tiny convnet unless a method needs another kind (MAE masks a ViT's patch tokens).
BACKBONES: dict[str, tuple[str, dict[str, Any]]] = {"mae": ("vit_tiny", {"depth": 1, "embed_dim": 16, "num_heads": 2})}
AUGMENT: dict[str, dict[str, Any]] = {"swav": {"num_local": 2}, "dino": {"num_local": 2}}
# SimCLR also trains the online probe.
# BYOL: lr 0.2 and weight decay 1.5e-6, the defaults the tolerance below was set with. The engine now
# takes BYOL's official 40-epoch preset for these 2 epochs (lr 0.45): with LARS the larger steps carry
# the float32 rounding of the split batch to 2.7x the tolerance, which says nothing about what crosses
# the processes.
EXTRA: dict[str, dict[str, Any]] = {"simclr": {"online_probe": True}, "byol": {"lr": 0.2, "weight_decay": 1.5e-6}}
NEGATIVE_CONTROL = "simclr-local-bn"  # SimCLR with per-process BN: must NOT match one process with global BN
CASES = [*ALL, NEGATIVE_CONTROL]


def case_config(case: str, root: Path, name: str, max_steps: int = STEPS) -> TrainConfig:
    method = "simclr" if case == NEGATIVE_CONTROL else case
    extra = {**EXTRA.get(method, {}), **({"sync_bn": False} if case == NEGATIVE_CONTROL else {})}
    values = dict(
        method=method, method_args=METHOD_ARGS.get(method, {}), augment=AUGMENT.get(method, {}),
        backbone=BACKBONES.get(method, ("tiny",))[0], backbone_args=BACKBONES.get(method, ("tiny", {"width": 8}))[1],
        data="cifar10", data_dir=str(shared_data_dir()),
        # kNN (on features gathered from both ranks) before and after training, on 40 test images
        train_subset=32, test_subset=40, eval_every=0, batch_size=BATCH, epochs=2, max_steps=max_steps, log_every=1,
        run_dir=str(root / case), name=name, progress=False, device="cpu", seed=3,
        # The equality proof is of float32 arithmetic: under bf16 autocast the split batch rounds
        # differently (relative ~1e-2), which says nothing about what crosses the processes; and
        # channels_last convolutions pick batch-size-dependent CPU kernels whose reordering Barlow
        # Twins' batch-standardized correlations amplify (1.55x the tolerance after 4 steps).
        precision="fp32", channels_last=False,
    )
    values.update(extra)
    return TrainConfig(**values)


def _worker(rank: int, port: int, root: str) -> None:
    """One of the 2 processes: join the group as under torchrun, train every case."""
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(WORLD), MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)
    )
    torch.set_num_threads(1)
    try:
        for case in CASES:
            trainer = Trainer(case_config(case, Path(root), "two"))
            trainer.fit()
            if rank == 1:  # every rank must hold what rank 0 saved
                torch.save(trainer.method.state_dict(), Path(root) / case / "rank1.pt")
    except BaseException:
        distributed.shutdown()
        raise
    distributed.shutdown(barrier=True)  # as `selfsup train` ends (see distributed.shutdown)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def two_process_runs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("dist")
    mp.spawn(_worker, args=(_free_port(), str(root)), nprocs=WORLD, join=True)
    return root


def one_process(case: str, root: Path, name: str, max_steps: int = STEPS, resume: bool = False) -> dict[str, Any]:
    """Run ``case`` on this process (per-process BN emulated for methods that keep it); returns
    the state it started from (model and probe head)."""
    trainer = Trainer(case_config(case, root, name, max_steps), resume=resume)
    sync = trainer.config.sync_bn if trainer.config.sync_bn is not None else trainer.method.sync_batchnorm
    if not sync:
        distributed.emulate_per_process_bn(trainer.method, WORLD)
    start = {"model": clone(trainer.method.state_dict()), "buffers": buffer_names(trainer.method)}
    if trainer.online_probe is not None:
        start["probe"] = clone(trainer.online_probe.head.state_dict())
        start["probe_buffers"] = buffer_names(trainer.online_probe.head)
    trainer.fit()
    return start


def buffer_names(module: torch.nn.Module) -> set[str]:
    """State-dict keys of buffers: written by the forward and the hooks (BN statistics, queues,
    banks, centres), never by an optimizer, so compared without the step-relative term."""
    # non-persistent buffers (MAE's fixed sin-cos positions) are not in the state dict
    return {name for name, _ in module.named_buffers()} & set(module.state_dict())


def clone(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {key: value.detach().clone() for key, value in state.items()}


def final_state(root: Path, case: str, name: str) -> dict[str, Any]:
    return ckpt.load_checkpoint(ckpt.list_checkpoints(root / case / name)[0])


def worst_mismatch(
    expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor], start: dict[str, torch.Tensor],
    buffers: set[str], buffer_eta: float = BUFFER_ETA,
) -> tuple[float, str]:
    """The largest ``|a - b| / (ATOL + RTOL |b| + ETA max|b - b0|)`` over all entries and
    elements (<= 1 passes), and its key: ``b`` is the one-process value, ``b0`` the value the
    tensor started from. Buffers (``buffers``: queues, banks, centres, BN statistics) are bound by
    ``ATOL + RTOL |b| + buffer_eta max|b|``, what float reordering explains: the step-relative
    term would let a queue or bank overwritten in full differ by 0.01 per element. Integer
    tensors (queue pointers, BN counters) must be equal."""
    assert expected.keys() == actual.keys() and buffers <= expected.keys()
    worst, where = 0.0, ""
    for key, b in expected.items():
        a = actual[key]
        if not b.is_floating_point():
            ratio = 0.0 if torch.equal(a, b) else float("inf")
        elif b.numel() == 0:
            ratio = 0.0
        else:
            a, b, b0 = a.double(), b.double(), start[key].double()
            scale = buffer_eta * b.abs().max() if key in buffers else ETA * (b - b0).abs().max()
            bound = ATOL + RTOL * b.abs() + scale
            ratio = float(((a - b).abs() / bound).max())
        if ratio > worst:
            worst, where = ratio, key
    return worst, where


def losses(run_dir: Path) -> list[float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in records if "loss" in r]


@pytest.mark.parametrize("case", ALL)
def test_two_processes_equal_one_process(case: str, two_process_runs: Path, tmp_path: Path) -> None:
    root = two_process_runs
    two = final_state(root, case, "two")
    assert two["run_state"]["step"] == STEPS
    # Every rank holds the same model (rank 0 wrote the checkpoint, rank 1 saved its own).
    rank1 = torch.load(root / case / "rank1.pt", weights_only=True)
    assert all(torch.equal(rank1[k], v) for k, v in two["model"].items()), case

    start = one_process(case, tmp_path, "one")
    one = final_state(tmp_path, case, "one")
    worst, key = worst_mismatch(one["model"], two["model"], start["model"], start["buffers"])
    assert worst <= 1.0, f"{case}: {key} differs by {worst:.3g} x the tolerance"
    if "probe" in start:
        worst, key = worst_mismatch(one["online_probe"]["head"], two["online_probe"]["head"], start["probe"], start["probe_buffers"])
        assert worst <= 1.0, f"{case} online probe: {key} differs by {worst:.3g} x the tolerance"
    # The logged loss is the global batch's, not scaled by the number of processes.
    assert losses(root / case / "two") == pytest.approx(losses(tmp_path / case / "one"), rel=RTOL)
    # kNN on the features each rank extracted of its share of the images, gathered: exactly the
    # same on the initial model; after training, within one of the 40 test images (a near tie
    # may tip either way with parameters equal to the tolerance).
    summary_two = json.loads((root / case / "two" / "summary.json").read_text())
    summary_one = json.loads((tmp_path / case / "one" / "summary.json").read_text())
    assert summary_two["knn_random_top1"] == summary_one["knn_random_top1"]
    assert abs(summary_two["knn_top1"] - summary_one["knn_top1"]) <= 1 / 40 + 1e-9

    # Resume on one process from the 2-process checkpoint: it continues as the one-process run does.
    shutil.copytree(root / case / "two", tmp_path / case / "two-then-one")
    one_process(case, tmp_path, "two-then-one", max_steps=2 * STEPS, resume=True)
    one_process(case, tmp_path, "one", max_steps=2 * STEPS, resume=True)
    resumed, reference = final_state(tmp_path, case, "two-then-one"), final_state(tmp_path, case, "one")
    assert resumed["run_state"]["step"] == reference["run_state"]["step"] == 2 * STEPS
    worst, key = worst_mismatch(reference["model"], resumed["model"], start["model"], start["buffers"], BUFFER_ETA_RESUMED)
    assert worst <= 1.0, f"{case} resumed: {key} differs by {worst:.3g} x the tolerance"


def test_negative_control_per_process_bn_differs_from_global_bn(two_process_runs: Path, tmp_path: Path) -> None:
    """The comparison can fail: SimCLR on 2 processes with per-process BN is far from one process
    with global BN (the information leak SimCLR's global BN closes)."""
    local = final_state(two_process_runs, NEGATIVE_CONTROL, "two")
    start = one_process("simclr", tmp_path, "one")
    # Every entry under the loose bound (buffers too): the control misses even that.
    worst, _ = worst_mismatch(final_state(tmp_path, "simclr", "one")["model"], local["model"], start["model"], set())
    assert worst > 30.0


# -- the command line: --devices starts torchrun; a lost process stops the run ------------------------


def _descendants(pid: int) -> list[int]:
    """Processes below ``pid`` (read from /proc)."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _rank_of(pid: int) -> int | None:
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    ranks = [item[5:] for item in environ if item.startswith(b"RANK=")]
    return int(ranks[0]) if ranks else None


def test_devices_runs_torchrun_a_lost_process_stops_all_and_one_process_resumes(tmp_path: Path) -> None:
    import signal
    import subprocess
    import sys
    import time

    from selfsup.cli import main

    args = [
        "train", "--method", "simclr", "--backbone", "tiny", "--data", "cifar10", "--data-dir", str(shared_data_dir()),
        "--batch-size", "16", "--epochs", "1000", "--device", "cpu", "--run-dir", str(tmp_path), "--name", "run",
        "train_subset=32", "test_subset=40", "eval_every=0", "checkpoint_every_steps=2", "progress=false",
        "backbone.width=8", "method.proj_hidden_dim=32", "method.proj_output_dim=16",
    ]
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    launcher = subprocess.Popen(
        [sys.executable, "-m", "selfsup", *args, "--devices", "2"], env=env, cwd=tmp_path,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not ckpt.list_checkpoints(tmp_path / "run") and launcher.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert ckpt.list_checkpoints(tmp_path / "run"), "the 2-process run wrote no checkpoint"
        workers = {_rank_of(pid): pid for pid in _descendants(launcher.pid)}
        assert {0, 1} <= set(workers), workers
        os.kill(workers[1], signal.SIGKILL)  # a process of the run dies (OOM killer, a lost machine)
        code = launcher.wait(timeout=120)
    finally:
        if launcher.poll() is None:
            launcher.kill()
    _, err = launcher.communicate()
    assert code != 0
    assert not [pid for pid in workers.values() if Path(f"/proc/{pid}").exists() and _rank_of(pid) is not None], (
        "a worker outlived the failed run"
    )
    # torchrun's report names the process that was killed as the root cause, not just "failed".
    assert "ChildFailedError" in err, err[-2000:]
    root_cause = err.split("Root Cause (first observed failure):", 1)[-1]
    assert re.search(r"rank\s*:\s*1 \(local_rank: 1\)", root_cause), err[-2000:]
    assert f"Signal 9 (SIGKILL) received by PID {workers[1]}" in root_cause, err[-2000:]
    found = ckpt.latest_good_checkpoint(tmp_path / "run")
    assert found is not None
    step = found[1]["run_state"]["step"]
    # The same run continues on one process (same global batch, same data order).
    assert main([*args, "--resume", f"max_steps={step + 2}"]) == 0
    assert ckpt.latest_good_checkpoint(tmp_path / "run")[1]["run_state"]["step"] == step + 2
