"""`selfsup data preview | pack | info` and how the command line reports user errors.

The subprocess tests run the real console entry point (``python -m selfsup``) with no network,
no $SELFSUP_DATA and an empty HOME: what a user on a fresh offline machine would see.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.augment import create_recipe
from selfsup.augment.recipes import available_recipes
from selfsup.cli import main as cli
from selfsup.data import load_dataset

ROOT = Path(__file__).resolve().parents[1]
PAD = 4  # preview_grid's gap between cells


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("SELFSUP_DATA", "SELFSUP_CACHE")}
    env.update(SELFSUP_OFFLINE="1", HOME=str(home), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "selfsup", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )


def test_preview_writes_a_grid_of_originals_and_views(tmp_path, data_dir) -> None:
    out = tmp_path / "views.png"
    done = run_cli("data", "preview", "--data", "cifar10", "--data-dir", str(data_dir), "--recipe", "simclr",
                   "--out", str(out), home=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout and "2 views" in done.stdout
    picture = np.asarray(Image.open(out))
    # 8 rows (images) x 3 columns (original + 2 views) of 96 px cells (32 px shown 3x), 4 px gaps.
    cell = 32 * 3
    assert picture.shape == (8 * (cell + PAD) + PAD, 3 * (cell + PAD) + PAD, 3)
    # The first column is the original images, pixel for pixel (each shown as 3 x 3 blocks).
    originals = load_dataset("cifar10", "train", data_dir=data_dir, limit=8, seed=0).images.numpy()
    for row in range(8):
        y = PAD + row * (cell + PAD)
        tile = picture[y : y + cell, PAD : PAD + cell]
        assert np.array_equal(tile[::3, ::3], originals[row])
        view = picture[y : y + cell, PAD + cell + PAD : PAD + 2 * cell + PAD]
        assert not np.array_equal(view[::3, ::3], originals[row])  # an augmented view, not a copy


# The views each recipe makes (columns after the original): a registered recipe missing here fails.
COLUMNS = {"simclr": 2, "byol": 2, "multicrop": 8, "dino": 10, "cmc_lab": 2, "cpc_patches": 1}


def test_the_preview_list_names_every_recipe() -> None:
    assert sorted(COLUMNS) == available_recipes()


@pytest.mark.parametrize("recipe", available_recipes())
def test_preview_of_every_recipe(tmp_path, data_dir, recipe: str, capsys) -> None:
    """Colour images (CIFAR-10): on the grey digits CMC's ab view would be blank by right."""
    columns = COLUMNS[recipe]
    made = create_recipe(recipe, 32)(torch.zeros(1, 32, 32, 3, dtype=torch.uint8), torch.Generator().manual_seed(0))
    assert len(made) == columns
    out = tmp_path / f"{recipe}.png"
    args = ["data", "preview", "--data", "cifar10", "--data-dir", str(data_dir), "--recipe", recipe, "--count", "3"]
    assert cli([*args, "--out", str(out)]) == 0
    picture = np.asarray(Image.open(out))
    height, width = picture.shape[:2]
    cell = (height - PAD) // 3 - PAD
    assert height == 3 * (cell + PAD) + PAD
    assert width == (1 + columns) * (cell + PAD) + PAD
    for column in range(1 + columns):  # every column drawn: no cell left blank
        x = PAD + column * (cell + PAD)
        assert picture[PAD:-PAD, x : x + cell].std() > 1, f"column {column} is blank"
    assert f"{columns} views each" in capsys.readouterr().out


def test_pack_and_info(tmp_path, capsys) -> None:
    out = tmp_path / "digits.npz"
    assert cli(["data", "pack", "digits", str(out)]) == 0
    assert "train 1442, test 355 images" in capsys.readouterr().out
    assert cli(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1442 training images of 32 px, 10 classes" in text and "classes: 0, 1, 2" in text
    assert cli(["data", "info", "digits"]) == 0
    assert "1442 training images" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, expected",
    [
        (["data", "info", "cifar11"], "Did you mean 'cifar10'"),
        (["data", "preview", "--recipe", "simclrr"], "Did you mean 'simclr'"),
        (["data", "preview", "blur_pp=0.5"], "Did you mean 'blur_p'"),
        (["data", "pack", "digits", "out.zip"], "must end in .npz"),
        (["data", "info", "no/such/folder"], "does not exist"),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, monkeypatch, capsys, args, expected) -> None:
    monkeypatch.chdir(tmp_path)
    assert cli(args) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("selfsup: error: ") and expected in lines[0], captured.err
    assert "Traceback" not in captured.err


def test_missing_cifar_offline_is_a_clear_error_without_traceback(tmp_path) -> None:
    done = run_cli("data", "preview", "--data", "cifar100", "--data-dir", str(tmp_path / "d"),
                   "--out", str(tmp_path / "x.png"), home=tmp_path)
    assert done.returncode == 2
    assert "Traceback" not in done.stderr and done.stderr.startswith("selfsup: error: cifar100 was not found")
    assert str(tmp_path / "d" / "cifar-100-python") in done.stderr
    assert str(tmp_path / ".cache" / "selfsup" / "cifar100.npz") in done.stderr
    assert not (tmp_path / "x.png").exists()


def test_unknown_command_line_option_exits_2_without_traceback(tmp_path) -> None:
    done = run_cli("data", "preview", "--recipee", "simclr", home=tmp_path)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unrecognized arguments: --recipee" in done.stderr
