"""`selfsup report`: an offline HTML page whose every image loads in a real browser (headless
Chromium, Debian's `chromium` package; CI installs it in .ci/run), and whose figures say true things."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from selfsup.cli import main
from selfsup.eval.report import pick_queries, project_2d

from .eval_runs import tiny_run, vit_run

CHROMIUM = Path("/usr/bin/chromium")
# Appended to a copy of the page: after the load event, record which <img> failed to decode.
_CHECK = (
    "<script>window.addEventListener('load',()=>{const imgs=Array.from(document.images);"
    "const bad=imgs.filter(i=>!(i.complete&&i.naturalWidth>0)).map(i=>i.getAttribute('src'));"
    "const out=document.createElement('pre');out.id='image-check';"
    "out.textContent=JSON.stringify({total:imgs.length,bad:bad});document.body.appendChild(out);});</script>"
)


def images_in_chromium(page: Path, tmp_path: Path) -> dict:
    """Open ``page`` in headless Chromium; {"total": n, "bad": [src of images that did not load]}.

    Fails (never skips) when Chromium is missing: the report's promise is that it renders."""
    assert CHROMIUM.is_file(), "headless Chromium is required: apt-get install -y chromium (.ci/run installs it)"
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    command = [
        str(CHROMIUM), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--virtual-time-budget=10000", "--dump-dom",
        probe.resolve().as_uri(),
    ]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    finally:
        probe.unlink()
    found = re.search(r'<pre id="image-check">(.*?)</pre>', done.stdout)
    assert found, f"Chromium did not render the page (exit {done.returncode}): {done.stderr[-2000:]}"
    return json.loads(found.group(1))


def test_the_image_check_catches_a_broken_image(tmp_path) -> None:
    """The browser check can fail: a page with one missing and one real PNG reports exactly the
    missing one."""
    from PIL import Image

    Image.new("RGB", (4, 4), "red").save(tmp_path / "real.png")
    page = tmp_path / "page.html"
    page.write_text('<!DOCTYPE html><html><body><img src="real.png"><img src="missing.png"></body></html>')
    assert images_in_chromium(page, tmp_path) == {"total": 2, "bad": ["missing.png"]}


def test_report_page_renders_with_every_figure(tmp_path_factory, tmp_path, capsys) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("evals.jsonl", "report"))
    assert main(["eval", "knn", str(run), "--train-subset", "96", "--test-subset", "40", "--device", "cpu"]) == 0
    args = ["report", str(run), "--train-subset", "96", "--test-subset", "60", "--queries", "4", "--k", "5", "--device", "cpu"]
    assert main(args) == 0
    page = run / "report" / "index.html"
    assert str(page) in capsys.readouterr().out
    text = page.read_text()
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert sources == ["loss.png", "lr.png", "knn.png", "embedding_map.png", "retrieval.png", "augmentations.png"]
    assert all((run / "report" / s).stat().st_size > 1000 for s in sources)
    assert "http://" not in text and "https://" not in text  # opens offline: no external resource
    assert "method_args.proj_hidden_dim" in text and "t-SNE" in text  # config table; scikit-learn's map
    assert "<td>knn</td>" in text  # the probe recorded by `selfsup eval knn`
    assert images_in_chromium(page, tmp_path) == {"total": len(sources), "bad": []}


def test_retrieval_grid_frames_wrong_class_neighbours_in_red(tmp_path) -> None:
    """Two classes, features that put each query's nearest neighbour in the other class for
    class 0 and in its own class for class 1: the frames must say so pixel by pixel."""
    import numpy as np
    import torch
    from PIL import Image

    from selfsup.data import ImageSet
    from selfsup.eval.report import GREEN, RED, retrieval_grid

    images = torch.full((4, 8, 8, 3), 128, dtype=torch.uint8)
    train = ImageSet("t", "train", torch.tensor([0, 1]), ["a", "b"], images=images[:2])
    test = ImageSet("t", "test", torch.tensor([0, 1]), ["a", "b"], images=images[2:])
    train_features = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    test_features = torch.tensor([[0.0, 1.0], [0.0, 1.0]])  # both nearest to train image 1 (class 1)
    stats = retrieval_grid(train, train_features, test, test_features, tmp_path / "grid.png", queries=2, k=1)
    assert stats == {"queries": 2, "k": 1, "same_class": 0.5}
    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    side = 64 + 6  # 8 px tiles upscaled to 64, with a 3 px frame
    first_neighbour_left = side + 64 // 4  # after the query tile and the gap
    assert tuple(grid[0, first_neighbour_left]) == RED  # query of class 0, neighbour of class 1
    assert tuple(grid[side + 4, first_neighbour_left]) == GREEN  # query of class 1, same class


def test_queries_take_one_image_per_class_in_turn() -> None:
    import torch

    assert pick_queries(torch.tensor([2, 2, 0, 1, 0, 1, -1]), 5) == [2, 3, 0, 4, 5]


def test_projection_falls_back_to_pca_for_many_points() -> None:
    import numpy as np

    points = np.random.default_rng(0).normal(size=(60, 8))
    coords, used = project_2d(points, "auto", tsne_limit=50)
    assert used == "PCA" and coords.shape == (60, 2)


def test_vit_report_draws_attention_maps(tmp_path_factory, tmp_path) -> None:
    run = tmp_path / "vit"
    shutil.copytree(vit_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("report"))
    assert main(["report", str(run), "--train-subset", "16", "--test-subset", "16", "--map", "pca", "--device", "cpu"]) == 0
    text = (run / "report" / "index.html").read_text()
    maps = re.findall(r'<img src="(attention_\d\.png)"', text)
    assert len(maps) == 4 and all((run / "report" / m).is_file() for m in maps)


@pytest.mark.parametrize("missing", ["summary.json", "metrics.jsonl"])
def test_report_of_a_run_with_missing_files_still_writes_a_page(tmp_path_factory, tmp_path, missing) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("evals.jsonl", "report"))
    (run / missing).unlink()
    assert main(["report", str(run), "--train-subset", "32", "--test-subset", "20", "--map", "pca", "--device", "cpu"]) == 0
    assert (run / "report" / "index.html").is_file()
