"""`selfsup embed` and `selfsup neighbors` on a real folder of JPEGs written from CIFAR-10."""

from __future__ import annotations

import csv
import json
import shutil

import numpy as np
import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.eval.embed import near_duplicates, nearest

from .eval_runs import reencode, tiny_run, write_jpeg_folder


@pytest.fixture()
def folder(tmp_path):
    """12 CIFAR test JPEGs in 3 class folders, an exact copy of one and a re-encoded (quality 60)
    copy of another: 14 files, two planted near-duplicate pairs."""
    root = tmp_path / "photos"
    files = write_jpeg_folder(root, per_class=4, classes=3)
    shutil.copy(files[0], files[0].parent / "copy.jpg")
    reencode(files[1], files[1].parent / "requality.jpg", quality=60)
    return root, files


def test_embed_writes_features_names_and_provenance(tmp_path_factory, tmp_path, folder, capsys) -> None:
    root, files = folder
    run = tiny_run(tmp_path_factory)
    out = tmp_path / "out" / "emb.npy"
    assert main(["embed", "--checkpoint", str(run), "--data", str(root), "--out", str(out), "--batch-size", "5",
                 "--device", "cpu"]) == 0
    assert "(14 x 32)" in capsys.readouterr().out  # width-8 tiny net: 4 * 8 features
    features = np.load(out)
    rows = list(csv.DictReader(out.with_suffix(".csv").open()))
    assert features.shape == (14, 32) and features.dtype == np.float32 and len(rows) == 14
    assert {r["class"] for r in rows} == {"airplane", "automobile", "bird"}
    assert json.loads(out.with_suffix(".json").read_text())["checkpoint"] == str(run.resolve())
    # Row i is the embedding of the file named in row i (batches of 5 kept in order).
    model = selfsup.load_backbone(run, device="cpu")
    for i in (0, 7, 13):
        with torch.no_grad():
            one = model(model.preprocess([rows[i]["path"]]))[0].numpy()
        np.testing.assert_allclose(features[i], one, rtol=1e-4, atol=1e-5)


def test_neighbors_and_duplicates_find_the_planted_copies(tmp_path_factory, tmp_path, folder, capsys) -> None:
    root, files = folder
    run = tiny_run(tmp_path_factory)
    out = tmp_path / "emb.npy"
    assert main(["embed", "--checkpoint", str(run), "--data", str(root), "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()

    # Near-duplicates: the exact copy (similarity 1) and the re-encoded copy, and nothing else.
    # Measured on this run's features, centred: copy 1.000, re-encoded 0.994, the next pair
    # (two different airplanes) 0.92 and the median pair -0.15; raw cosines put all 91 pairs
    # above 0.97, which is why the similarity is centred by default.
    assert main(["neighbors", "--embeddings", str(out), "--duplicates", "--threshold", "0.97", "--json"]) == 0
    pairs = json.loads(capsys.readouterr().out)
    found = [{p["a"].rsplit("/", 1)[1], p["b"].rsplit("/", 1)[1]} for p in pairs]
    assert found == [{files[0].name, "copy.jpg"}, {files[1].name, "requality.jpg"}]
    assert pairs[0]["similarity"] > 0.9999 and pairs[0]["similarity"] >= pairs[1]["similarity"]
    assert main(["neighbors", "--embeddings", str(out), "--duplicates", "--threshold", "0.97", "--no-center"]) == 0
    raw_count = int(capsys.readouterr().err.strip().split()[0])
    assert raw_count == len(near_duplicates(np.load(out), 0.97, center=False)) > 10  # raw cosines crowd near 1

    # A query image from outside the folder: the re-encoded file's original is its nearest.
    query = reencode(files[1], tmp_path / "query.jpg", quality=80)
    assert main(["neighbors", "--embeddings", str(out), "--query", str(query), "--k", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 2 and {lines[0].split("\t")[2].rsplit("/", 1)[1], lines[1].split("\t")[2].rsplit("/", 1)[1]} == {
        files[1].name, "requality.jpg"}

    # A row number: its neighbours, never itself.
    row = [r["path"] for r in csv.DictReader(out.with_suffix(".csv").open())].index(str(files[0]))
    assert main(["neighbors", "--embeddings", str(out), "--query", str(row), "--k", "3", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert len(result) == 3 and all(r["row"] != row for r in result)
    assert result[0]["path"].endswith("copy.jpg") and result[0]["similarity"] > 0.9999


def test_nearest_and_duplicates_on_known_vectors() -> None:
    features = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    assert [i for i, _ in nearest(features, np.array([1.0, 0.0]), 2, center=False)] in ([0, 3], [3, 0])
    pairs = near_duplicates(features, 0.99, center=False, chunk=1)  # blocks of one row still see each pair once
    assert [(i, j) for i, j, _ in pairs][0] == (0, 3) and all(i < j for i, j, _ in pairs)
    assert len(pairs) == len({(i, j) for i, j, _ in pairs})


def test_neighbors_errors_are_clear(tmp_path_factory, tmp_path, folder, capsys) -> None:
    root, _ = folder
    out = tmp_path / "emb.npy"
    assert main(["embed", "--checkpoint", str(tiny_run(tmp_path_factory)), "--data", str(root), "--out", str(out),
                 "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["neighbors", "--embeddings", str(out), "--query", "99"]) == 2
    assert "out of range" in capsys.readouterr().err
    assert main(["neighbors", "--embeddings", str(tmp_path / "none.npy"), "--query", "1"]) == 2
    assert "selfsup embed" in capsys.readouterr().err
    assert main(["embed", "--checkpoint", str(tmp_path), "--data", str(root), "--out", str(out)]) == 2
