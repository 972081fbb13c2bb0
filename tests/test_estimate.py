"""Before the first step: defaults that fit the machine (explicit settings kept exactly), the
estimate line from a timed warm-up step (which leaves the run bit-for-bit unchanged), and the
refusal of a step whose predicted memory exceeds what the machine has, before it is allocated."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.engine import TrainConfig, Trainer
from selfsup.engine import estimate
from selfsup.errors import ConfigError

from .eval_runs import write_jpeg_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("estimate") / "photos"
    write_jpeg_folder(root, per_class=30, classes=3)  # 90 photos: 81 train after the held-out 10%
    return root


def test_defaults_fit_the_machine_and_explicit_settings_are_kept(photos, monkeypatch) -> None:
    config, line = estimate.fit_defaults(TrainConfig(data=str(photos), device="cpu"))
    assert (config.backbone, config.image_size) == ("tiny", 64)
    assert config.batch_size == 16  # the largest power of two leaving 4 steps per epoch of 81 images
    assert line.startswith("selfsup: chose backbone tiny, image size 64, batch size 16 for a CPU")
    assert "81 training images" in line and "Set --backbone / --image-size / --batch-size to override." in line
    explicit = TrainConfig(data=str(photos), device="cpu", backbone="resnet18", image_size=48, batch_size=40)
    assert estimate.fit_defaults(explicit) == (explicit, None)
    # Little memory: the chosen batch shrinks until the predicted step fits in half of it.
    monkeypatch.setattr(estimate, "free_memory", lambda device: 700 << 20)
    config, line = estimate.fit_defaults(TrainConfig(data=str(photos), device="cpu", batch_size=None))
    assert config.batch_size < 16 and "0.7 GiB of memory available" in line


def run_config(photos: Path, tmp_path: Path, name: str, **values) -> TrainConfig:
    base = dict(data=str(photos), backbone="tiny", backbone_args={"width": 8}, image_size=32, batch_size=16,
                epochs=2, eval_every=None, device="cpu", run_dir=str(tmp_path), name=name, progress=False,
                method="byol", method_args={"proj_hidden_dim": 32, "proj_output_dim": 16, "pred_hidden_dim": 32})
    base.update(values)
    return TrainConfig(**base)


def test_estimate_line_comes_before_training_and_changes_nothing(photos, tmp_path, monkeypatch, capsys) -> None:
    # BYOL: an EMA target, BN statistics and the random draws a warm-up step must leave as they were.
    summary = Trainer(run_config(photos, tmp_path, "with")).fit()
    err = capsys.readouterr().err
    found = re.search(r"selfsup: estimate: ([\d.]+) s/step \(a timed warm-up step of batch 16\), 5 steps/epoch = "
                      r"[\d.]+ s/epoch; 10 steps = ~[\d.]+ (s|min)( \+ ~[\d.]+ (s|min) of kNN evaluation)? in all; peak memory [\d.]+ (MiB|GiB) of [\d.]+ GiB available\.", err)
    assert found, err
    assert err.index("timing one warm-up step (batch 16") < err.index("selfsup: estimate:")
    assert float(found.group(1)) > 0 and summary["steps"] == 10
    with_estimate = torch.load(summary["checkpoint"], weights_only=True)["model"]
    monkeypatch.setattr("selfsup.engine.trainer.estimate_run", lambda trainer: None)
    without = torch.load(Trainer(run_config(photos, tmp_path, "without")).fit()["checkpoint"], weights_only=True)["model"]
    assert with_estimate.keys() == without.keys()
    for key in with_estimate:
        assert torch.equal(with_estimate[key], without[key]), key


def test_a_step_that_cannot_fit_is_refused_before_it_is_allocated(photos, tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(estimate, "free_memory", lambda device: 1 << 30)  # a machine with 1 GiB free
    batches = []
    real = estimate._forward_backward
    monkeypatch.setattr(estimate, "_forward_backward",
                        lambda method, views, *rest: (batches.append(len(views[0])), real(method, views, *rest)))
    config = run_config(photos, tmp_path, "big", method="simclr", backbone="resnet18", backbone_args={}, image_size=64,
                        batch_size=64, method_args={})
    with pytest.raises(ConfigError) as caught:
        Trainer(config).fit()
    message = str(caught.value)
    assert re.search(r"one training step would need about [\d.]+ GiB of memory \(simclr / resnet18 at 64 px, 2 views, "
                     r"batch 64: .*more than the 1.0 GiB available on cpu\. Not starting; batch_size=\d+ fits", message), message
    fits = int(re.search(r"batch_size=(\d+) fits", message).group(1))
    assert 1 <= fits < 64
    assert max(batches) <= 4  # only the small probe steps ran: the full batch was never allocated
    assert not list((tmp_path / "big").glob("checkpoints/*.pt")) and not (tmp_path / "big" / "metrics.jsonl").exists()
    # From the command line: one line, exit status 2.
    code = main(["train", "--data", str(photos), "--backbone", "resnet18", "--image-size", "64", "--batch-size", "64",
                 "--device", "cpu", "--run-dir", str(tmp_path), "--name", "cli", "progress=false"])
    err = capsys.readouterr().err
    assert code == 2 and "selfsup: error: one training step would need about" in err and "Traceback" not in err
