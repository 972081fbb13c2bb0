"""`selfsup compare`: one table of the probes of several runs, read from their files."""

from __future__ import annotations

import csv
import json
import shutil

import torch
import torch.nn.functional as F

from selfsup.api import load_backbone
from selfsup.cli import main
from selfsup.data import load_dataset

from .conftest import shared_data_dir
from .eval_runs import tiny_run


def test_compare_reads_each_runs_files_into_markdown_and_csv(tmp_path_factory, tmp_path, capsys) -> None:
    first = tiny_run(tmp_path_factory)
    # A second run: a copy whose summary says another method and other accuracies, so every value
    # in the table must come from its own run's files.
    second = tmp_path / "other-run"
    shutil.copytree(first, second, ignore=shutil.ignore_patterns("evals.jsonl", "report"))
    summary = json.loads((second / "summary.json").read_text())
    summary.update(method="byol", knn_top1=0.4321, best_knn_top1=0.5, knn_random_top1=0.25, wall_time_s=12.5)
    (second / "summary.json").write_text(json.dumps(summary))
    # A linear probe recorded in the second run (as `selfsup eval linear` writes it).
    record = {"probe": "linear", "learned": {"top1": 0.61, "top5": 0.9}, "random": {"top1": 0.3, "top5": 0.7},
              "settings": {"epochs": 100}}
    low_label = {**record, "learned": {"top1": 0.11, "top5": 0.5}, "settings": {"labels_per_class": 1}}
    (second / "evals.jsonl").write_text(json.dumps(record) + "\n" + json.dumps(low_label) + "\n")

    out_csv = tmp_path / "table.csv"
    assert main(["compare", str(first), str(second), "--csv", str(out_csv)]) == 0
    table = capsys.readouterr().out.strip().splitlines()
    assert table[0].startswith("| run | method | backbone |") and len(table) == 4
    own = json.loads((first / "summary.json").read_text())
    assert f"| {100 * own['knn_top1']:.2f}% |" in table[2] and "| simclr | tiny |" in table[2]
    assert "| byol |" in table[3] and "| 43.21% | 50.00% | 25.00% | 61.00% | 30.00% |" in table[3]

    rows = list(csv.DictReader(out_csv.open()))
    assert [r["run"] for r in rows] == [first.name, "other-run"]
    assert float(rows[0]["knn_last"]) == own["knn_top1"] and float(rows[0]["wall_time_s"]) == own["wall_time_s"]
    assert rows[0]["linear"] == ""  # nothing recorded, nothing invented
    # The full-label linear probe is reported, not the newer low-label one.
    assert float(rows[1]["linear"]) == 0.61 and float(rows[1]["knn_best"]) == 0.5


def test_compare_probe_knn_computes_and_records(tmp_path_factory, tmp_path, capsys) -> None:
    """`compare --probe knn` against an independent probe: the backbone as `load_backbone` gives
    it, the same fixed subsets, and InstDisc's weighted kNN (T=0.1) written out here in float64,
    with k = min(200, bank images per class) = 100 for 1,000 training images of 10 classes. The
    100 neighbours are a choice (with k near the bank's size every image votes and the majority
    class wins whatever the features); the predictions are checked to spread over the classes, so
    the accuracy depends on the features."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run(tmp_path_factory), run, ignore=shutil.ignore_patterns("evals.jsonl", "report"))
    (run / "summary.json").unlink()  # a run without a summary (e.g. interrupted): kNN must come from --probe
    args = ["compare", str(run), "--probe", "knn", "--train-subset", "1000", "--test-subset", "200", "--device", "cpu"]
    assert main(args) == 0
    line = capsys.readouterr().out.strip().splitlines()[2]
    record = json.loads((run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["probe"] == "knn" and record["settings"]["test_subset"] == 200
    k = record["settings"]["k"]
    assert k == 100 and f"| {k} |" in line  # the k rule, shown in the table
    assert f"{100 * record['learned']['top1']:.2f}%" in line and f"{100 * record['random']['top1']:.2f}%" in line

    backbone = load_backbone(run, device="cpu")
    train = load_dataset("cifar10", "train", data_dir=shared_data_dir(), limit=1000, seed=0)
    test = load_dataset("cifar10", "test", data_dir=shared_data_dir(), limit=200, seed=0)
    with torch.no_grad():
        bank = F.normalize(backbone(backbone.preprocess(train.images)).double(), dim=1)
        queries = F.normalize(backbone(backbone.preprocess(test.images)).double(), dim=1)
    similarity, nearest = (queries @ bank.T).topk(k, dim=1)
    weights, voters = (similarity / 0.1).exp(), train.labels[nearest]
    votes = torch.stack([(weights * (voters == c)).sum(1) for c in range(10)], dim=1)
    ranked = votes.argsort(dim=1, descending=True)
    top1 = float((ranked[:, 0] == test.labels).double().mean())
    top5 = float((ranked[:, :5] == test.labels[:, None]).any(1).double().mean())
    assert len(ranked[:, 0].unique()) >= 5, "the probe must depend on the features, not a majority vote"
    # One test image is 0.005: float32 against float64 may flip at most a near-tie (none today).
    assert abs(record["learned"]["top1"] - top1) <= 0.005 + 1e-6, (record["learned"], top1)
    assert abs(record["learned"]["top5"] - top5) <= 0.005 + 1e-6, (record["learned"], top5)


def test_compare_refuses_a_folder_that_is_not_a_run(tmp_path, capsys) -> None:
    assert main(["compare", str(tmp_path)]) == 2
    assert "not a run directory" in capsys.readouterr().err
