"""The engine: exact resume, non-finite losses, schedules, optimizers, config errors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from selfsup.engine import TrainConfig, Trainer, build_config, train
from selfsup.engine import checkpoint as ckpt
from selfsup.engine.optim import LARS, build_optimizer, cosine_schedule, scaled_lr
from selfsup.errors import ConfigError, NonFiniteLossError


def small_config(tmp_path, **overrides) -> TrainConfig:
    values = dict(
        method="simclr", backbone="tiny", data="digits", batch_size=64, epochs=2, eval_every=None,
        run_dir=str(tmp_path), name="run", progress=False, device="cpu", train_subset=256,
        method_args={"proj_hidden_dim": 64},
    )
    values.update(overrides)
    return TrainConfig(**values)


@pytest.mark.parametrize("stop_after", [4, 6])  # at an epoch boundary (4 steps/epoch) and mid-epoch
def test_resume_ends_with_the_parameters_of_an_uninterrupted_run(tmp_path, stop_after: int) -> None:
    reference = Trainer(small_config(tmp_path / "a"))
    reference.fit()
    interrupted = Trainer(small_config(tmp_path / "b", max_steps=stop_after))
    interrupted.fit()
    assert interrupted.state.step == stop_after
    resumed = Trainer(small_config(tmp_path / "b"), resume=True)
    assert resumed.state.step == stop_after
    resumed.fit()
    ref_state, res_state = reference.method.state_dict(), resumed.method.state_dict()
    for key in ref_state:
        assert torch.equal(ref_state[key], res_state[key]), key


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch) -> None:
    from selfsup.methods.simclr import SimCLR

    real_forward = SimCLR.forward

    def forward(self, views, index=None):
        out = real_forward(self, views, index)
        # The step the engine is taking (it sets progress before every step; the estimate's probe
        # steps before training are not training steps): 6, in the second epoch, after the epoch-1 checkpoint.
        if self.progress.step == 6:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)
    trainer = Trainer(small_config(tmp_path))
    with pytest.raises(NonFiniteLossError, match="step 6"):
        trainer.fit()
    saved = ckpt.list_checkpoints(trainer.run_dir)
    assert [p.name for p in saved] == ["step-000000004.pt"]
    state = ckpt.load_checkpoint(saved[0])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_metrics_of_a_run_resumed_after_a_crash_have_each_step_once(tmp_path, monkeypatch) -> None:
    """A run that dies after its last checkpoint has logged steps its resumed run logs again
    (metrics.jsonl is only appended to); read_metrics, which the report uses, keeps each step
    once, from the run that went on."""
    from selfsup.engine.logger import read_jsonl, read_metrics
    from selfsup.eval.report import read_run
    from selfsup.methods.simclr import SimCLR

    real_forward = SimCLR.forward

    def forward(self, views, index=None):
        out = real_forward(self, views, index)
        if self.progress.step == 6:  # the checkpoint is at step 4, steps 5 and 6 are logged
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)
    with pytest.raises(NonFiniteLossError):
        Trainer(small_config(tmp_path, log_every=1)).fit()
    monkeypatch.setattr(SimCLR, "forward", real_forward)
    resumed = Trainer(small_config(tmp_path, log_every=1), resume=True)
    assert resumed.state.step == 4
    resumed.fit()
    raw = [r["step"] for r in read_jsonl(resumed.run_dir / "metrics.jsonl") if "loss" in r]
    assert len(raw) > len(set(raw)), raw  # the dead attempt's steps are in the file
    records = read_metrics(resumed.run_dir)
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == list(range(1, 9)), steps
    assert read_run(resumed.run_dir)["metrics"] == records


def test_skip_nonfinite_skips_the_step(tmp_path, monkeypatch) -> None:
    from selfsup.methods.simclr import SimCLR

    real_forward = SimCLR.forward

    def forward(self, views, index=None):
        out = real_forward(self, views, index)
        if self.progress.step == 1:  # the engine's step (the estimate's probes before training are not steps)
            out["loss"] = out["loss"] + float("inf")
        return out

    monkeypatch.setattr(SimCLR, "forward", forward)
    summary = train(small_config(tmp_path, skip_nonfinite=True))
    assert summary["skipped_steps"] == 1 and summary["steps"] == 8
    state = ckpt.load_checkpoint(summary["checkpoint"])
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.dtype.is_floating_point)


def test_second_run_into_the_same_directory_refuses(tmp_path) -> None:
    train(small_config(tmp_path, max_steps=1))
    with pytest.raises(ConfigError, match="--resume"):
        Trainer(small_config(tmp_path, max_steps=1))


def test_run_directory_contents(tmp_path) -> None:
    summary = train(small_config(tmp_path, eval_every=1, log_every=2))
    run = tmp_path / "run"
    assert (run / "config.yaml").is_file() and (run / "summary.json").is_file()
    assert any((run / "tensorboard").iterdir())
    lines = [l for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) >= 4 and '"loss"' in lines[0] or '"knn_top1"' in lines[0]
    assert summary["knn_top1"] is not None and summary["knn_random_top1"] is not None


def test_cosine_schedule_warmup_then_cosine() -> None:
    lr = cosine_schedule(1.0, 0.0, 100, warmup_steps=10)
    assert len(lr) == 100
    assert lr[0] == 0.0 and lr[5] == pytest.approx(0.5) and lr[10] == pytest.approx(1.0)
    assert lr[55] == pytest.approx(0.5, abs=0.03) and lr[-1] < 0.001
    assert np.all(np.diff(lr[10:]) <= 1e-12)


def test_lr_scaling_rules() -> None:
    assert scaled_lr(0.3, 512) == pytest.approx(0.6)
    assert scaled_lr(0.3, 256, "sqrt") == pytest.approx(0.3)
    assert scaled_lr(0.3, 1024, "sqrt") == pytest.approx(0.6)


def test_lars_excludes_bias_and_norm_and_scales_by_trust_ratio() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    groups = [{"params": list(model.parameters())}]
    optimizer = build_optimizer(groups, "lars", lr=0.1, weight_decay=0.01, momentum=0.0)
    assert isinstance(optimizer, LARS)
    weight, bias = model[0].weight, model[0].bias
    w0, b0 = weight.detach().clone(), bias.detach().clone()
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    g = torch.ones_like(w0) + 0.01 * w0
    trust = 0.001 * w0.norm() / g.norm()
    assert torch.allclose(weight, w0 - 0.1 * trust * g, atol=1e-7)
    assert torch.allclose(bias, b0 - 0.1 * torch.ones_like(b0), atol=1e-7)  # no decay, no trust ratio


def test_config_errors_are_clear() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'batch_size'"):
        build_config(None, None, ["batchsize=3"])
    with pytest.raises(ConfigError, match="expected an integer"):
        build_config(None, None, ["epochs=two"])
    with pytest.raises(ConfigError, match="Did you mean 'simclr'"):
        build_config(None, {"method": "simclrr"}).resolve()
    with pytest.raises(ConfigError, match="temperature must be > 0"):
        build_config(None, None, ["method.temperature=0"]).resolve()
    with pytest.raises(ConfigError, match="lr must be > 0"):
        build_config(None, None, ["lr=-1"]).resolve()
    with pytest.raises(ConfigError, match="unknown key 'temprature'"):
        build_config(None, None, ["method.temprature=0.1"]).resolve()


def test_batch_larger_than_dataset_is_refused(tmp_path) -> None:
    with pytest.raises(ConfigError, match="larger than the training set"):
        Trainer(small_config(tmp_path, batch_size=512))


def test_bundled_configs_resolve() -> None:
    from selfsup.engine.config import CONFIG_DIR

    files = sorted(CONFIG_DIR.glob("*.yaml"))
    assert files
    for path in files:
        config = build_config(str(path)).resolve()
        assert config.epochs and config.batch_size and math.isfinite(config.lr)


def test_online_probe_learns_from_detached_features(tmp_path) -> None:
    summary = train(small_config(tmp_path, online_probe=True, epochs=4, log_every=1, train_subset=None))
    import json

    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accs = [r["online_probe_acc"] for r in records if "online_probe_acc" in r]
    assert len(accs) == summary["steps"]
    # Ten digit classes: chance is 0.1; a linear head on even these briefly trained features
    # passes 0.5 within a few dozen steps.
    assert max(accs[-5:]) > 0.5
