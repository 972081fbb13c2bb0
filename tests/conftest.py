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


# Worker-seconds of the slow tests in a clean clone's `.ci/run` on a 2-core Intel Xeon without
# native bf16 (pytest --durations, 2026-12-01). Only their order matters: `scripts/test --slow`
# hands the tests to its two workers in collection order (xdist's `load`), so starting the longest
# first lets both finish together. In that run the slow suite's wall time was 30 s above half its
# 8,900 worker-seconds; the run before, work stealing in file order, was 482 s above half of 8,110.
SLOW_SECONDS = {
    "test_byol_learns_on_cifar10": 1723, "test_simsiam_learns_on_cifar10": 1264, "test_dino_learns_on_cifar10": 1242,
    "test_swav_learns_on_cifar10": 868, "test_cpc_beats_random_init_on_cifar10": 743,
    "test_moco_v3_beats_random_init_on_cifar10": 594, "test_instdisc_learns_on_cifar10": 549,
    "test_without_stop_gradient_the_output_collapses": 320, "test_barlow_twins_learns_on_cifar10": 262,
    "test_mae_learns_on_cifar10": 257, "test_simclr_beats_random_init_on_cifar10": 253,
    "test_vicreg_learns_on_cifar10": 233, "test_moco_v2_beats_random_init_on_cifar10": 206,
    "test_moco_v1_beats_random_init_on_cifar10": 205, "test_cmc_learns_on_cifar10": 182,
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
