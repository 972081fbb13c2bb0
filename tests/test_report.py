"""`selfsup report`: an offline HTML page whose every image loads in a real browser (headless
Chromium, found as .ci/run finds it: `chromium`, else `chromium-browser` or `google-chrome` on the
PATH; CI installs Debian's `chromium`), and whose figures say true things."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from selfsup.cli import main
from selfsup.eval.report import pick_queries, project_2d

from .eval_runs import tiny_run, vit_run

BROWSERS = ("chromium", "chromium-browser", "google-chrome")  # .ci/run: command -v chromium
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
    browser = next((found for name in BROWSERS if (found := shutil.which(name))), None)
    assert browser, f"headless Chromium is required ({', '.join(BROWSERS)} on the PATH): apt-get install -y chromium (.ci/run installs it)"
    probe = page.with_name(f".check-{page.name}")
    probe.write_text(page.read_text().replace("</body>", _CHECK + "</body>"))
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
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


def rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(int)


def pixels_of(image: np.ndarray, colour: tuple[int, int, int], tolerance: int = 10) -> int:
    """How many pixels are within ``tolerance`` of ``colour`` (antialiased lines blend at their edges)."""
    return int((np.abs(image - np.array(colour)).max(-1) <= tolerance).sum())


C0, GRAY = (31, 119, 180), (128, 128, 128)  # matplotlib's first line colour; the random-init baseline


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
    # Each figure's content: its size in pixels, and the marks it must show. Curves: 5 x 3.2 in
    # at 100 dpi; the line is drawn in C0 (hundreds of pixels; an empty axes has none).
    report = run / "report"
    for name in ("loss.png", "lr.png", "knn.png"):
        image = rgb(report / name)
        assert image.shape == (320, 500, 3), name
        assert pixels_of(image, C0) > 100, f"{name}: no curve drawn"
    assert pixels_of(rgb(report / "knn.png"), GRAY) > 200  # the dashed random-init line
    from matplotlib import colormaps

    scatter = rgb(report / "embedding_map.png")
    assert scatter.shape == (550, 650, 3)
    tab10 = [tuple(round(255 * c) for c in colormaps["tab10"](i)[:3]) for i in range(10)]
    assert sum(pixels_of(scatter, colour, 8) > 50 for colour in tab10) >= 5  # points of several classes
    # The retrieval grid: 4 queries x (query + 5 neighbours) of 64 px tiles with 3 px frames, a
    # 16 px gap after the query and 4 px between rows; blue query frames, and green/red frames
    # whose share is the one the caption states.
    from selfsup.eval.report import BLUE, GREEN, RED

    grid = rgb(report / "retrieval.png")
    assert grid.shape == (4 * 70 + 3 * 4, 70 + 16 + 5 * 70, 3)
    frames = [[tuple(grid[r * 74, 86 + j * 70]) for j in range(5)] for r in range(4)]
    assert all(tuple(grid[r * 74, 0]) == BLUE for r in range(4))
    assert all(f in (GREEN, RED) for row in frames for f in row), frames
    same = sum(f == GREEN for row in frames for f in row)
    assert f"{100 * same / 20:.1f}% of the neighbours shown share the query&#x27;s class" in text
    # The augmentation preview: 6 training images and their 2 SimCLR views, 96 px cells.
    views = rgb(report / "augmentations.png")
    assert views.shape == (6 * 100 + 4, 3 * 100 + 4, 3)
    cells = [views[4 + r * 100 : r * 100 + 100, 4 + c * 100 : c * 100 + 100] for r in range(6) for c in range(3)]
    assert all(cell.std() > 5 for cell in cells), "a blank cell in the augmentation preview"
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
    assert len(maps) == 4
    # Each map: the image, the mean over heads and ViT-Tiny's 3 heads, 2.2 x 2.5 in panels at 100
    # dpi. Every panel is drawn (most of its pixels, in many colours), the heads differ from one
    # another and the 4 query images give 4 different pictures.
    pictures = [rgb(run / "report" / m) for m in maps]
    for name, picture in zip(maps, pictures):
        assert picture.shape == (250, 5 * 220, 3), name
        panels = [picture[:, i * 220 : (i + 1) * 220] for i in range(5)]
        for i, panel in enumerate(panels):
            assert (panel.min(-1) < 250).mean() > 0.5 and len(np.unique(panel.reshape(-1, 3), axis=0)) > 100, (name, i)
        heads = panels[2:]
        assert all(not np.array_equal(a, b) for i, a in enumerate(heads) for b in heads[i + 1 :]), name
    assert all(not np.array_equal(a, b) for i, a in enumerate(pictures) for b in pictures[i + 1 :])


@pytest.mark.parametrize("missing", ["summary.json", "metrics.jsonl"])
def test_report_of_a_run_with_missing_files_still_writes_a_page(tmp_path_factory, tmp_path, missing) -> None:
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("evals.jsonl", "report"))
    (run / missing).unlink()
    assert main(["report", str(run), "--train-subset", "32", "--test-subset", "20", "--map", "pca", "--device", "cpu"]) == 0
    assert (run / "report" / "index.html").is_file()
