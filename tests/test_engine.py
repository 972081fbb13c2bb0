"""The engine: exact resume, non-finite losses, schedules, optimizers, config errors."""

from __future__ import annotations

import json
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
    from selfsup.runs import read_jsonl, read_metrics
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
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    # 8 steps (4 per epoch), a loss record every 2 steps, a kNN record before training (the
    # random-init baseline) and at the end of each epoch, in the order they happened.
    kinds = [("knn" if "knn_top1" in r else "loss", r["step"], r["epoch"]) for r in records]
    assert kinds == [
        ("knn", 0, 0), ("loss", 2, 0), ("loss", 4, 0), ("knn", 4, 1), ("loss", 6, 1), ("loss", 8, 1), ("knn", 8, 2),
    ], kinds
    assert records[0]["random_init"] is True and not any(r.get("random_init") for r in records[1:])
    for r in records:
        assert set(r) >= ({"time", "knn_top1", "knn_top5"} if "knn_top1" in r else {"time", "loss", "lr", "images_per_s"})
        assert all(math.isfinite(v) for k, v in r.items() if isinstance(v, float))
    assert summary["knn_random_top1"] == records[0]["knn_top1"] and summary["knn_top1"] == records[-1]["knn_top1"]
    assert summary["best_knn_top1"] == max(r["knn_top1"] for r in records[1:] if "knn_top1" in r)


def test_config_yaml_reads_back_as_the_run_was_configured(tmp_path) -> None:
    """Resume reads config.yaml: a string that YAML 1.2 reads as a number (a run named 1e5) must
    be written quoted, or the run could not be resumed (found by tests/reliability/test_properties.py)."""
    trainer = Trainer(small_config(tmp_path, name="1e5", method_args={"proj_hidden_dim": 64, "temperature": 1e-1}))
    trainer.close()
    assert build_config(str(tmp_path / "1e5" / "config.yaml")) == trainer.config


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
    """One LARS step against the formula in float64. Weight decay 0.5 turns the update's
    direction by about 15% of its size, and every bias/BN value is far from zero, so a dropped
    decay, a decayed bias or BN weight, or a trust ratio on them would each miss the expected
    update by more than 20 times the tolerance (asserted below, so the check stays able to fail)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    with torch.no_grad():
        model[1].weight.uniform_(0.5, 2.0)  # BN's own init (weight 1, bias 0) would hide a decay of the bias
        model[1].bias.uniform_(0.5, 2.0)
        model[0].bias.uniform_(0.5, 2.0)
    lr, wd, eta = 1.0, 0.5, 0.001
    optimizer = build_optimizer([{"params": list(model.parameters())}], "lars", lr=lr, weight_decay=wd, momentum=0.0)
    assert isinstance(optimizer, LARS)
    before = {name: p.detach().clone().double() for name, p in model.named_parameters()}
    grads = {}
    for name, p in model.named_parameters():
        p.grad = torch.randn_like(p)
        grads[name] = p.grad.double()
    optimizer.step()
    moved = {name: p.detach().double() - before[name] for name, p in model.named_parameters()}

    w, grad = before["0.weight"], grads["0.weight"]
    decayed = grad + wd * w
    expected = -lr * eta * w.norm() / decayed.norm() * decayed
    without_decay = -lr * eta * w.norm() / grad.norm() * grad
    tolerance = 1e-3 * float(expected.abs().max())  # float32 rounding of w + update is ~1e-4 of the update
    torch.testing.assert_close(moved["0.weight"], expected, rtol=0, atol=tolerance)
    assert float((without_decay - expected).abs().max()) > 20 * tolerance  # the decay is visible

    # Biases and BN parameters (ndim <= 1): plain SGD, neither decay nor trust ratio.
    for name in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(moved[name], -lr * grads[name], rtol=0, atol=1e-6)
        assert float((lr * wd * before[name]).abs().min()) > 1e-2  # a decay here would show


def solo_learn_lars_step(w: torch.Tensor, g: torch.Tensor, lr: float, wd: float, eta: float, clip: bool) -> torch.Tensor:
    """One momentum-free step of solo-learn's solo/utils/lars.py (a copy of Lightning Bolts'), written
    out from its text: lars_lr = eta |w| / (|g| + wd |w| + eps); with clip_lars_lr, min(lars_lr / lr, 1);
    then d_p = (g + wd w) * lars_lr and w -= lr * d_p."""
    lars_lr = eta * float(w.norm()) / (float(g.norm()) + float(w.norm()) * wd + 1e-8)
    if clip:
        lars_lr = min(lars_lr / lr, 1.0)
    return w - lr * (g + wd * w) * lars_lr


@pytest.mark.parametrize("lr, clip", [(0.5, True), (1e-6, True), (0.5, False)])
def test_larc_trust_ratio_and_clipping_match_solo_learn(lr: float, clip: bool) -> None:
    """solo-learn's CIFAR recipes: eta 0.02, clip_lr, biases and norms excluded. With clipping the
    trust ratio caps the learning rate (lr 0.5: the ratio, about 0.02 |w| / |g|, is the smaller);
    at a tiny lr the lr itself is the step size (the ratio / lr is clipped to 1)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.BatchNorm1d(5))
    optimizer = build_optimizer(
        [{"params": list(model.parameters())}], "lars", lr=lr, weight_decay=1e-4, momentum=0.0,
        lars_eta=0.02, lars_clip_lr=clip, lars_trust="larc",
    )
    w0, b0 = model[0].weight.detach().clone(), model[0].bias.detach().clone()
    grads = {p: torch.randn_like(p) for p in model.parameters()}
    for p, g in grads.items():
        p.grad = g.clone()
    optimizer.step()
    want = solo_learn_lars_step(w0, grads[model[0].weight], lr, 1e-4, 0.02, clip)
    torch.testing.assert_close(model[0].weight.detach(), want, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(model[0].bias.detach(), b0 - lr * grads[model[0].bias])  # excluded: plain SGD
    if clip and lr == 1e-6:
        torch.testing.assert_close(model[0].weight.detach(), w0 - lr * (grads[model[0].weight] + 1e-4 * w0))


def test_lars_without_exclusion_adapts_and_decays_biases_too() -> None:
    """SwAV's apex LARC (and MoCo v3's ViT AdamW) treat every parameter alike."""
    model = torch.nn.Linear(4, 3)
    optimizer = build_optimizer([{"params": list(model.parameters())}], "lars", 0.1, 0.01, exclude_bias_norm=False)
    assert len(optimizer.param_groups) == 1 and optimizer.param_groups[0]["weight_decay"] == 0.01
    assert not optimizer.param_groups[0]["lars_exclude"]
    adamw = build_optimizer([{"params": list(model.parameters())}], "adamw", 0.1, 0.1, exclude_bias_norm=False)
    assert [g["weight_decay"] for g in adamw.param_groups] == [0.1]


def test_step_schedule_drops_at_the_milestones() -> None:
    from selfsup.engine.optim import step_schedule

    lr = step_schedule(0.03, 200, [120, 160], 0.1)
    assert lr[0] == lr[119] == 0.03 and lr[120] == pytest.approx(0.003) and lr[159] == pytest.approx(0.003)
    assert lr[160] == pytest.approx(0.0003) and lr[-1] == pytest.approx(0.0003)
    warm = step_schedule(1.0, 10, [5], 0.5, warmup_steps=2, warmup_start=0.2)
    assert warm.tolist() == pytest.approx([0.2, 0.6, 1, 1, 1, 0.5, 0.5, 0.5, 0.5, 0.5])


def test_schedules_of_a_config_follow_its_epochs() -> None:
    """build_schedules: milestones in epochs become steps; warmup from warmup_start_lr; the cosine
    ends at min_lr when set."""
    from selfsup.engine.build import build_schedules

    config = TrainConfig(method="instdisc", data="digits", epochs=10, batch_size=64, lr=0.03, lr_schedule="step",
                         lr_milestones=[6, 8], lr_scaling="none").resolve()
    s = build_schedules(config, steps_per_epoch=20)
    assert s.milestone_steps == [120, 160] and s.lr[119] == pytest.approx(0.03) and s.lr[120] == pytest.approx(0.003)
    config = TrainConfig(method="simclr", data="digits", epochs=10, batch_size=256, lr=0.4, warmup_epochs=1,
                         warmup_start_lr=3e-5, min_lr=1e-3).resolve()
    s = build_schedules(config, steps_per_epoch=20)
    assert s.lr[0] == pytest.approx(3e-5) and s.lr[20] == pytest.approx(0.4)
    assert 1e-3 <= s.lr[-1] < 1.05e-3  # the last of 180 cosine steps sits 0.4 x (pi / 180)^2 / 4 above its end


def test_weight_decay_end_follows_weight_decay_unless_set() -> None:
    """DINO's ViT recipe schedules 0.04 -> 0.4; a weight decay set alone is constant (finding 1)."""
    vit = TrainConfig(method="dino", backbone="vit_tiny", data="digits").resolve()
    assert (vit.weight_decay, vit.weight_decay_end) == (0.04, 0.4)
    own = TrainConfig(method="dino", backbone="vit_tiny", data="digits", weight_decay=0.05).resolve()
    assert (own.weight_decay, own.weight_decay_end) == (0.05, None)
    both = TrainConfig(method="dino", backbone="vit_tiny", data="digits", weight_decay=0.05, weight_decay_end=0.5).resolve()
    assert (both.weight_decay, both.weight_decay_end) == (0.05, 0.5)


def test_config_errors_are_clear(tmp_path) -> None:
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
    # Found by the property tests: accepted, then a crash (seed overflow, DataLoader) or nonsense.
    with pytest.raises(ConfigError, match=r"seed must be in \[0, 2\*\*32\)"):
        build_config(None, None, ["seed=1e300"])
    with pytest.raises(ConfigError, match="num_workers must be >= 0"):
        build_config(None, None, ["num_workers=-1"])
    with pytest.raises(ConfigError, match=r"min_lr_ratio must be in \[0, 1\]"):
        build_config(None, None, ["min_lr_ratio=2"])
    with pytest.raises(ConfigError, match="unexpected keyword argument 'widht'"):
        Trainer(small_config(tmp_path, backbone_args={"widht": 8}))


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
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accs = [r["online_probe_acc"] for r in records if "online_probe_acc" in r]
    assert len(accs) == summary["steps"]
    # Ten digit classes: chance is 0.1; a linear head on even these briefly trained features
    # passes 0.5 within a few dozen steps.
    assert max(accs[-5:]) > 0.5


def test_online_probe_sends_no_gradient_into_the_method(tmp_path) -> None:
    """The probe's features are detached: a probe step leaves every gradient of the method
    untouched while it trains its own head, and a run with the probe ends with exactly the
    parameters of the same run without it. (Its extra forward pass in train mode does move the
    backbone's BN running statistics, which are buffers, not parameters; the trainer re-averages them.)"""
    from contextlib import nullcontext

    with_probe = Trainer(small_config(tmp_path / "a", online_probe=True, max_steps=3))
    with_probe.fit()
    without = Trainer(small_config(tmp_path / "b", max_steps=3))
    without.fit()
    plain = dict(without.method.named_parameters())
    for name, param in with_probe.method.named_parameters():
        assert torch.equal(param, plain[name]), name

    method, probe = with_probe.method, with_probe.online_probe
    batch = next(iter(with_probe.loader.epoch(0)))
    view = with_probe.make_views(batch.images)[0]
    method.zero_grad(set_to_none=True)
    head_before = [p.clone() for p in probe.head.parameters()]
    probe.step(method, view, batch.labels, 1.0, nullcontext())
    assert all(p.grad is None for p in method.parameters())
    assert all(p.grad is not None for p in probe.head.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(head_before, probe.head.parameters()))
