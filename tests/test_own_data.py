"""A user's own images: the ImageFolder layout, a fixed class-balanced held-out fraction, probes
that never score an image they search (``--test-data``, the self-probe warning), the kNN k taken
from the bank everywhere it is shown, raw uint8 ``.npz`` arrays, and one preprocessing path from a
file to the network input. All on real CIFAR-10 JPEGs written into tmp_path."""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import selfsup
from selfsup.cli import main
from selfsup.data import load_dataset
from selfsup.engine import TrainConfig, Trainer
from selfsup.errors import DataError

from .conftest import shared_data_dir
from .eval_runs import tiny_run, write_jpeg_folder

PER_CLASS, CLASSES = 20, 3  # 60 photos; 10% held out: 2 per class, k = 54 / 3 = 18


def folder_config(data: Path, run_dir: Path, name: str, **values) -> TrainConfig:
    base = dict(data=str(data), backbone="tiny", backbone_args={"width": 8}, image_size=32, batch_size=16, epochs=2,
                eval_every=1, device="cpu", run_dir=str(run_dir), name=name, progress=False, log_every=1,
                method_args={"proj_hidden_dim": 32, "proj_output_dim": 16})
    base.update(values)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("own") / "photos"
    write_jpeg_folder(root, per_class=PER_CLASS, classes=CLASSES)
    return root


@pytest.fixture(scope="module")
def folder_run(tmp_path_factory, photos) -> tuple[Path, Trainer, dict]:
    """SimCLR trained on the photos folder, monitored on its held-out images."""
    trainer = Trainer(folder_config(photos, tmp_path_factory.mktemp("runs"), "photos-run"))
    return trainer.run_dir, trainer, trainer.fit()


def paths_of(dataset) -> set[str]:
    return {os.path.realpath(p) for p in dataset.paths}


def test_imagefolder_layout_gives_its_splits_with_the_training_class_indices(tmp_path) -> None:
    root = tmp_path / "shop"
    write_jpeg_folder(root / "train", per_class=4, classes=3)
    write_jpeg_folder(root / "val", per_class=2, classes=3, offset=4)
    write_jpeg_folder(root / "test", per_class=1, classes=3, offset=6)
    for leftover in (root / "val" / "airplane").iterdir():  # a class without validation images
        leftover.unlink()
    (root / "val" / "airplane").rmdir()
    train, val, test = (load_dataset(str(root), split) for split in ("train", "val", "test"))
    assert len(train) == 12 and train.classes == ["airplane", "automobile", "bird"]
    assert val.classes == train.classes and sorted(val.labels.tolist()) == [1, 1, 2, 2]  # by name, not position
    assert len(test) == 3 and test.origin == str(root / "test")
    for dataset, sub in ((val, "val"), (test, "test")):
        names = [Path(p).parent.name for p in dataset.paths]
        assert [dataset.classes[i] for i in dataset.labels.tolist()] == names and all(f"/{sub}/" in p for p in dataset.paths)
    extra = tmp_path / "odd"
    write_jpeg_folder(extra / "train", per_class=1, classes=1)
    write_jpeg_folder(extra / "val", per_class=1, classes=1)
    (extra / "val" / "airplane").rename(extra / "val" / "kite")
    with pytest.raises(DataError, match="'kite' of .* are not classes of"):
        load_dataset(str(extra), "val")


def test_held_out_fraction_is_fixed_class_balanced_and_disjoint(photos) -> None:
    train = load_dataset(str(photos), "train", image_size=32, val_fraction=0.25)
    held = load_dataset(str(photos), "test", image_size=32, val_fraction=0.25)
    assert torch.bincount(held.labels).tolist() == [5] * CLASSES  # 25% of each class of 20
    assert torch.bincount(train.labels).tolist() == [15] * CLASSES
    assert not paths_of(train) & paths_of(held) and len(paths_of(train) | paths_of(held)) == PER_CLASS * CLASSES
    # The split depends on nothing but the files and the fraction (split seed 0, not the run's seed).
    again = load_dataset(str(photos), "test", image_size=32, val_fraction=0.25, seed=7)
    assert paths_of(again) == paths_of(held)
    whole = load_dataset(str(photos), "test", image_size=32)  # no fraction: all of it, as before
    assert len(whole) == PER_CLASS * CLASSES


def test_training_on_a_folder_monitors_held_out_images_with_k_from_the_bank(folder_run, photos, capsys) -> None:
    run_dir, trainer, summary = folder_run
    bank, queries = trainer.eval_sets
    assert trainer.train_set is bank and len(bank) == 54 and len(queries) == 6
    assert not paths_of(bank) & paths_of(queries)  # pretraining never saw the query images either
    assert summary["knn_k"] == 18 and "held-out 10% of each class, split seed 0" in summary["knn_queries"]
    # The same k in evals.jsonl, compare and the report.
    assert main(["eval", "knn", str(run_dir), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"knn \(k=18\): bank .*training part.*: 54 images; scored on .*held-out 10%.*: 6 images", out), out
    record = json.loads((run_dir / "evals.jsonl").read_text().splitlines()[-1])
    assert record["settings"]["k"] == 18 and record["bank"].endswith("54 images")
    assert main(["compare", str(run_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split(" | ")[6] == "kNN k" and table[2].split(" | ")[6] == "18"
    assert main(["report", str(run_dir), "--device", "cpu", "--map", "pca"]) == 0
    capsys.readouterr()
    page = (run_dir / "report" / "index.html").read_text()
    assert "k=18, best during training" in page and "k=18" in page.split("kNN during training")[1]


def test_test_data_self_probe_and_shared_files(folder_run, photos, tmp_path, capsys) -> None:
    run_dir, _, _ = folder_run
    other = tmp_path / "other"
    write_jpeg_folder(other, per_class=5, classes=CLASSES, offset=PER_CLASS)
    assert main(["eval", "knn", str(run_dir), "--test-data", str(other), "--device", "cpu", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["test_data"] == str(other) and result["queries"] == f"{other} (all images): 15 images"
    assert result["bank"] == f"{photos} (all images): 60 images"  # separate queries: every photo is in the bank
    # Nothing held out and no --test-data: refused rather than scoring the bank's own images.
    assert main(["eval", "knn", str(run_dir), "--val-fraction", "0", "--device", "cpu"]) == 2
    assert "has no images held out from the bank" in capsys.readouterr().err
    # Asked for: the same source as --test-data, with a warning.
    assert main(["eval", "linear", str(run_dir), "--data", str(photos), "--test-data", str(photos), "--val-fraction",
                 "0", "--epochs", "5", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    assert "self-probe: the queries are the bank's own images" in captured.err and "optimistic" in captured.err
    # Queries that are some of the bank's files (links to them): those leave the bank.
    linked = tmp_path / "linked"
    for path in sorted(photos.rglob("*.jpg"))[::10]:
        (linked / path.parent.name).mkdir(parents=True, exist_ok=True)
        (linked / path.parent.name / path.name).symlink_to(path)
    assert main(["eval", "knn", str(run_dir), "--data", str(photos), "--test-data", str(linked), "--val-fraction", "0",
                 "--device", "cpu", "--json"]) == 0
    captured = capsys.readouterr()
    assert "6 image(s) of" in captured.err and "left out of the bank" in captured.err
    assert json.loads(captured.out)["bank"].endswith(": 54 images")


def test_raw_uint8_arrays_train_and_evaluate(tmp_path) -> None:
    with np.load(shared_data_dir() / "cifar10.npz") as archive:
        classes, all_labels = [str(c) for c in archive["classes"]], archive["test_labels"]
        blob, offsets = archive["test_jpeg"], archive["test_offsets"]
    chosen = np.concatenate([np.nonzero(all_labels == c)[0][:9] for c in range(10)])  # 9 of each class
    labels = all_labels[chosen]
    colour = np.stack([np.asarray(Image.open(io.BytesIO(blob[offsets[i]:offsets[i + 1]].tobytes())).convert("RGB"))
                       for i in chosen])
    gray = colour.mean(axis=3).round().astype(np.uint8)  # (N, H, W), as MNIST-style files ship
    np.savez(tmp_path / "gray.npz", images=gray, labels=labels, classes=np.array(classes))
    summary = Trainer(folder_config(tmp_path / "gray.npz", tmp_path, "gray", epochs=1)).fit()
    assert summary["knn_top1"] is not None and "held-out 10% of each class" in summary["knn_queries"]
    train = load_dataset(str(tmp_path / "gray.npz"), "train", val_fraction=0.1)
    assert train.images.shape[1:] == (32, 32, 3) and torch.equal(train.images[..., 0], train.images[..., 2])
    np.savez(tmp_path / "split.npz", train_images=colour[:85], train_labels=labels[:85], test_images=colour[85:],
             test_labels=labels[85:])  # the test split holds class 9 only
    test = load_dataset(str(tmp_path / "split.npz"), "test", val_fraction=0.1)  # its own test split: no fraction
    assert len(test) == 5 and np.array_equal(test.images.numpy(), colour[85:]) and test.labels.tolist() == [9] * 5
    assert test.classes == load_dataset(str(tmp_path / "split.npz"), "train").classes == [str(c) for c in range(10)]
    np.savez(tmp_path / "floats.npz", images=colour / 255.0)
    with pytest.raises(DataError, match="must be uint8 pixel values 0-255, got float64"):
        load_dataset(str(tmp_path / "floats.npz"))


def test_a_file_queried_against_its_folder_is_first_at_cosine_one(tmp_path_factory, tmp_path, capsys) -> None:
    # Photos larger than the run's 32 px, so JPEG decoding scales them in the DCT (draft mode): a
    # query decoded any other way differs from its embedded self (the issue measured 0.9872).
    root = tmp_path / "big"
    for path in write_jpeg_folder(tmp_path / "small", per_class=4, classes=3):
        out = root / path.parent.name / path.name
        out.parent.mkdir(parents=True, exist_ok=True)
        Image.open(path).resize((96, 96), Image.Resampling.BICUBIC).save(out, quality=90)
    run = tiny_run(tmp_path_factory)
    emb = tmp_path / "emb.npy"
    assert main(["embed", "--checkpoint", str(run), "--data", str(root), "--out", str(emb), "--device", "cpu"]) == 0
    capsys.readouterr()
    query = sorted(root.rglob("*.jpg"))[5]
    assert main(["neighbors", "--embeddings", str(emb), "--query", str(query), "--k", "2", "--json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert found[0]["path"] == str(query) and abs(found[0]["similarity"] - 1.0) <= 1e-5
    # The same tensor through load_backbone(...).preprocess and through the probes' path.
    model = selfsup.load_backbone(run, device="cpu")
    dataset = load_dataset(str(root), image_size=model.preprocess.image_size)
    row = dataset.paths.index(str(query))
    from selfsup.eval.knn import center_crop

    probe_input = model.preprocess.transform(center_crop(dataset.images[row : row + 1], model.preprocess.crop_size))
    assert torch.equal(model.preprocess([query]), probe_input)
