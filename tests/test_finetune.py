"""Fine-tuning and the low-label protocol (class-balanced subsets drawn once with a seed)."""

from __future__ import annotations

import json

import pytest
import torch

from selfsup.cli import main
from selfsup.engine import load_method
from selfsup.errors import ConfigError, DataError
from selfsup.eval.finetune import class_balanced_subset, finetune, random_resized_crop_flip

from .eval_runs import tiny_run


def test_class_balanced_subset_is_balanced_fixed_and_seeded() -> None:
    labels = torch.arange(10).repeat_interleave(torch.arange(20, 30))  # classes of 20..29 images
    labels = torch.cat((labels, torch.full((7,), -1)))  # unlabelled images are never drawn
    picked = class_balanced_subset(labels, per_class=3, seed=0)
    assert torch.equal(torch.bincount(labels[picked], minlength=10), torch.full((10,), 3))
    assert torch.equal(picked, class_balanced_subset(labels, per_class=3, seed=0))
    assert not torch.equal(picked, class_balanced_subset(labels, per_class=3, seed=1))
    assert torch.equal(picked, picked.sort().values) and len(picked.unique()) == 30
    # 10% of classes of 20..29 images: round(2.0 .. 2.9) = 2 or 3 each, never 0.
    counts = torch.bincount(labels[class_balanced_subset(labels, fraction=0.1)], minlength=10)
    assert counts.tolist() == [2, 2, 2, 2, 2, 2, 3, 3, 3, 3]
    assert torch.bincount(labels[class_balanced_subset(labels, fraction=0.001)], minlength=10).min() == 1


def test_class_balanced_subset_refuses_impossible_requests() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1])
    with pytest.raises(DataError, match="only 2 labelled"):
        class_balanced_subset(labels, per_class=3)
    with pytest.raises(ConfigError, match="exactly one"):
        class_balanced_subset(labels, per_class=1, fraction=0.1)
    with pytest.raises(ConfigError, match="label_fraction"):
        class_balanced_subset(labels, fraction=1.5)


def test_crop_flip_keeps_uint8_and_flips_exactly_when_the_crop_is_the_whole_image() -> None:
    images = torch.randint(0, 256, (64, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    out = random_resized_crop_flip(images, 16, (1.0, 1.0), torch.Generator().manual_seed(0))
    assert out.dtype == torch.uint8 and out.shape == images.shape
    same = (out == images).flatten(1).all(1)
    mirrored = (out == images.flip(2)).flatten(1).all(1)
    assert bool((same | mirrored).all())  # a full-image crop resamples pixel centres exactly
    assert 10 < int(mirrored.sum()) < 54  # about half are flipped (binomial(64, 1/2): 5 sigma)


def test_finetune_trains_the_backbone_only_when_its_lr_is_not_zero(tmp_path_factory, cifar_small) -> None:
    train, _ = cifar_small
    labelled = train.subset(class_balanced_subset(train.labels, per_class=4, seed=0))
    results, moved = {}, {}
    for ratio in (0.0, 1.0):
        method, _, _ = load_method(tiny_run(tmp_path_factory), "cpu")
        before = [p.detach().clone() for p in method.backbone.parameters()]
        results[ratio] = finetune(method, labelled, labelled, "cpu", epochs=15, batch_size=40, lr=0.5,
                                  backbone_lr_ratio=ratio, weight_decay=0.0, crop_scale=(1.0, 1.0))
        moved[ratio] = max(float((a - b).abs().max()) for a, b in zip(before, method.backbone.parameters()))
    assert moved[0.0] == 0.0 and moved[1.0] > 1e-3
    for result in results.values():
        assert result["steps"] == 15 and result["train_images"] == 40
        assert 0.0 <= result["top1"] <= result["top5"] <= 1.0
    # Training the backbone too fits the 40 images better than the head alone. Measured at these
    # 15 steps (fine-tune seeds 0 and 1): last loss 2.128 / 2.109 against 2.230 / 2.231 for the
    # frozen backbone, gaps 0.10 / 0.12; the 0.05 margin is half the lower gap, and a backbone that
    # did not train would tie (gap 0: the same computation as the frozen one).
    assert results[1.0]["final_loss"] < results[0.0]["final_loss"] - 0.05, results


def test_cli_finetune_low_label_beside_from_scratch_and_recorded(tmp_path_factory, capsys) -> None:
    run = tiny_run(tmp_path_factory)
    args = ["eval", "finetune", str(run), "--labels-per-class", "2", "--epochs", "2", "--batch-size", "20",
            "--train-subset", "200", "--test-subset", "40", "--device", "cpu"]
    assert main(args) == 0
    line = capsys.readouterr().out
    assert "(20 labelled images)" in line and "vs from scratch" in line
    record = json.loads((run / "evals.jsonl").read_text().splitlines()[-1])
    assert record["probe"] == "finetune" and record["train_images"] == 20
    assert record["settings"]["labels_per_class"] == 2 and record["settings"]["epochs"] == 2
    assert set(record) >= {"learned", "random"}


def test_cli_linear_with_a_label_fraction(tmp_path_factory, capsys) -> None:
    run = tiny_run(tmp_path_factory)
    args = ["eval", "linear", str(run), "--label-fraction", "0.1", "--epochs", "3", "--train-subset", "200",
            "--test-subset", "40", "--device", "cpu", "--json"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert 15 <= result["train_images"] <= 25  # 10% of each class of a 200-image random subset
    with pytest.raises(SystemExit):  # the two low-label options exclude each other
        main(["eval", "linear", str(run), "--labels-per-class", "1", "--label-fraction", "0.1"])
