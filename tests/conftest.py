"""Shared fixtures: real CIFAR-10 from ../shared/data, small and decoded once per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """``$SELFSUP_TEST_DATA`` or ``../shared/data`` beside the repository (as in CI)."""
    path = Path(os.environ.get("SELFSUP_TEST_DATA", ROOT.parent / "shared" / "data"))
    if not (path / "cifar10.npz").is_file():
        raise FileNotFoundError(
            f"tests need CIFAR-10 at {path / 'cifar10.npz'} (set SELFSUP_TEST_DATA to its folder)"
        )
    return path


@pytest.fixture(scope="session")
def data_dir() -> Path:
    return shared_data_dir()


@pytest.fixture(scope="session")
def cifar_npz(data_dir: Path) -> Path:
    return data_dir / "cifar10.npz"


@pytest.fixture(scope="session")
def cifar_small(data_dir: Path):
    """2,000 training and 500 test images of CIFAR-10 (fixed random subsets)."""
    from selfsup.data import load_dataset

    train = load_dataset("cifar10", "train", data_dir=data_dir, limit=2000, seed=0)
    test = load_dataset("cifar10", "test", data_dir=data_dir, limit=500, seed=0)
    return train, test


# Worker-seconds of the slow tests in a clean clone's CI on a 2-core Intel Xeon without native bf16
# (pytest --durations, 2026-12-01; DINO's three seeds from their benchmarks/learning.py rows). Only
# their order matters: `scripts/test --slow` hands the tests to its two workers in collection order
# (xdist's `load`), so starting the longest first lets both finish together (a replay of xdist's
# rule with these durations: 4,507 s for the busier worker against 4,506.5 s, half the work; in
# file order one worker would idle 28 minutes at the end). The previous run, work stealing in file
# order, took 4,537 s for 4,055 s a worker of the durations above without DINO's two extra seeds.
SLOW_SECONDS = {
    "test_byol_learns_on_cifar10": 1714, "test_dino_learns_on_cifar10": 1320, "test_simsiam_learns_on_cifar10": 1306,
    "test_swav_learns_on_cifar10": 859, "test_cpc_beats_random_init_on_cifar10": 798,
    "test_moco_v3_beats_random_init_on_cifar10": 593, "test_instdisc_learns_on_cifar10": 545,
    "test_without_stop_gradient_the_output_collapses": 321, "test_mae_learns_on_cifar10": 263,
    "test_barlow_twins_learns_on_cifar10": 243, "test_vicreg_learns_on_cifar10": 237,
    "test_simclr_beats_random_init_on_cifar10": 236, "test_moco_v1_beats_random_init_on_cifar10": 202,
    "test_moco_v2_beats_random_init_on_cifar10": 199, "test_cmc_learns_on_cifar10": 177,
}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Longest slow tests first; every other test keeps its place (a stable sort on cost 0)."""
    items.sort(key=lambda item: -SLOW_SECONDS.get(getattr(item, "originalname", item.name), 0))


def worker_threads() -> int:
    """Intra-op threads of one test process: two cores' worth, shared among pytest-xdist workers
    when the slow suite runs them side by side (on 2 cores, 2 workers of 1 thread trained 1.4x the
    images per second of one 2-thread process: BYOL's learning run, 138 s for two against 98 s for one)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, os.cpu_count() or 1) // workers)


@pytest.fixture(autouse=True)
def _offline_and_threads(monkeypatch: pytest.MonkeyPatch) -> None:
    # Never try to download in tests; keep the thread count fixed so timings and
    # floating-point reductions are the same on every run.
    monkeypatch.setenv("SELFSUP_OFFLINE", "1")
    threads = worker_threads()
    torch.set_num_threads(threads)
    if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
        # Several workers share the cores (scripts/test --slow): the engine would otherwise take
        # every physical core in each of them (hardware.configure_cpu_threads honours this).
        monkeypatch.setenv("OMP_NUM_THREADS", str(threads))
