"""BYOL (Grill et al. 2020, arXiv 2006.07733): the loss against eq. 2, the EMA target and its
cosine schedule (section 3.2), the target's lack of gradient, and learning on real CIFAR-10."""

from __future__ import annotations

import math

import pytest
import torch

from selfsup import methods
from selfsup.engine import TrainConfig, Trainer
from selfsup.engine.optim import build_optimizer
from selfsup.errors import ConfigError
from selfsup.losses import byol_loss, normalized_mse
from selfsup.methods import Progress
from selfsup.nn import create_backbone, ema_update

from .learning import assert_learns, output_std


def normalized_mse_reference(q: torch.Tensor, z: torch.Tensor) -> float:
    """Eq. 2 transcribed loop by loop in float64: mean_i || q_i / |q_i| - z_i / |z_i| ||^2."""
    q, z = q.double(), z.double()
    total = 0.0
    for i in range(q.shape[0]):
        q_norm = math.sqrt(sum(float(v) ** 2 for v in q[i]))
        z_norm = math.sqrt(sum(float(v) ** 2 for v in z[i]))
        total += sum((float(a) / q_norm - float(b) / z_norm) ** 2 for a, b in zip(q[i], z[i]))
    return total / q.shape[0]


def fixed_pair(seed: int, n: int = 6, d: int = 7) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    q = torch.randn(n, d, generator=generator)
    return q, q + 0.7 * torch.randn(n, d, generator=generator)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_normalized_mse_matches_eq_2(seed: int) -> None:
    q, z = fixed_pair(seed)
    assert float(normalized_mse(q, z)) == pytest.approx(normalized_mse_reference(q, z), rel=1e-6)
    # ... which is 2 - 2 cos, per pair.
    cos = torch.nn.functional.cosine_similarity(q.double(), z.double(), dim=1)
    assert float(normalized_mse(q, z)) == pytest.approx(float((2 - 2 * cos).mean()), rel=1e-6)


def test_normalized_mse_extremes_and_scale_invariance() -> None:
    q, _ = fixed_pair(3)
    assert float(normalized_mse(q, 5 * q)) == pytest.approx(0.0, abs=1e-6)  # same direction
    assert float(normalized_mse(q, -q)) == pytest.approx(4.0, rel=1e-6)  # opposite direction
    assert normalized_mse(q.bfloat16(), q.bfloat16()).dtype == torch.float32


def test_byol_loss_is_the_sum_of_both_directions_with_targets_stopped() -> None:
    q1, z2 = fixed_pair(4)
    q2, z1 = fixed_pair(5)
    expected = normalized_mse_reference(q1, z2) + normalized_mse_reference(q2, z1)
    q1, q2 = q1.requires_grad_(), q2.requires_grad_()
    z1, z2 = z1.requires_grad_(), z2.requires_grad_()
    loss = byol_loss(q1, q2, z1, z2)
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    loss.backward()
    assert q1.grad is not None and float(q1.grad.abs().sum()) > 0
    assert z1.grad is None and z2.grad is None, "sg(z'): the targets must not receive gradients"


def make_byol(**config) -> methods.Method:  # noqa: ANN003
    torch.manual_seed(0)
    return methods.create("byol", backbone=create_backbone("tiny", 32), proj_hidden_dim=64, pred_hidden_dim=64, **config)


def test_architecture_and_defaults() -> None:
    method = methods.create("byol", backbone=create_backbone("tiny", 32))
    linears = lambda mlp: [(m.in_features, m.out_features) for m in mlp if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert linears(method.projector) == [(method.feature_dim, 4096), (4096, 256)]
    assert linears(method.predictor) == [(256, 4096), (4096, 256)]
    assert method.config.tau_base == 0.99 and method.sync_batchnorm
    assert not methods.create("byol", backbone=create_backbone("tiny", 32), sync_bn=False).sync_batchnorm
    recipe = method.default_recipe(32)
    assert recipe.name == "byol"
    # The official preset of the epoch count (byol/configs/byol.py): 100 epochs 0.45 / 1e-6 / 0.99,
    # 1,000 epochs 0.2 / 1.5e-6 / 0.996.
    resolved = TrainConfig(method="byol", data="cifar10").resolve()
    assert (resolved.optimizer, resolved.lr, resolved.weight_decay, resolved.method_args["tau_base"]) == ("lars", 0.45, 1e-6, 0.99)
    resolved = TrainConfig(method="byol", data="cifar10", epochs=1000).resolve()
    assert (resolved.lr, resolved.weight_decay, resolved.method_args["tau_base"]) == (0.2, 1.5e-6, 0.996)
    resolved = TrainConfig(method="byol", data="cifar10", epochs=1000, method_args={"tau_base": 0.99}).resolve()
    assert resolved.method_args["tau_base"] == 0.99  # the config's own value wins
    with pytest.raises(ConfigError, match="tau_base"):
        methods.create("byol", backbone=create_backbone("tiny", 32), tau_base=1.5)


def test_lars_excludes_biases_and_bn_and_never_sees_the_target() -> None:
    method = make_byol()
    optimizer = build_optimizer(method.param_groups(), "lars", lr=0.1, weight_decay=1.5e-6)
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    target = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert target and not any(id(p) in in_optimizer for p in target)
    online = [p for n, p in method.named_parameters() if not n.startswith("target_")]
    assert {id(p) for p in online} == in_optimizer
    for group in optimizer.param_groups:
        small = all(p.ndim <= 1 for p in group["params"])
        assert group["lars_exclude"] == small and (group["weight_decay"] == 0.0) == small


@pytest.mark.parametrize("fraction", [0.0, 0.25, 0.5, 0.9, 1.0])
def test_ema_momentum_follows_the_cosine_schedule(fraction: float) -> None:
    method = make_byol(tau_base=0.996)
    total = 1000
    progress = Progress(step=int(fraction * total), total_steps=total)
    expected = 1 - (1 - 0.996) * (math.cos(math.pi * fraction) + 1) / 2  # section 3.2
    assert method.ema_momentum(progress) == pytest.approx(expected, abs=1e-12)
    assert method.ema_momentum(Progress(0, total)) == pytest.approx(0.996)
    assert method.ema_momentum(Progress(total, total)) == pytest.approx(1.0)


def test_target_gets_no_gradient_and_runs_in_train_mode(cifar_small) -> None:
    from selfsup.augment import create_recipe

    train, _ = cifar_small
    method = make_byol().train()
    views = create_recipe("byol", 32)(train.images[:32], torch.Generator().manual_seed(0))
    out = method(views)
    out["loss"].backward()
    target = [*method.target_backbone.parameters(), *method.target_projector.parameters()]
    assert all(p.grad is None and not p.requires_grad for p in target)
    assert float(method.backbone.body[0].weight.grad.abs().sum()) > 0
    # The target starts as a copy of the online network; it normalizes with the batch's own
    # statistics (train mode), so its projections equal the online ones and the loss can be
    # recomputed from the online network alone. In eval mode (running statistics) they would differ.
    assert all(m.training for m in method.target_backbone.modules())
    with torch.no_grad():
        z = [method.projector(method.backbone(v)) for v in views]
        q = [method.predictor(zi) for zi in z]
        assert float(out["loss"]) == pytest.approx(float(byol_loss(q[0], q[1], z[0], z[1])), rel=1e-5)
        method.target_backbone.eval(), method.target_projector.eval()
        z_eval = method.target_projector(method.target_backbone(views[0]))
        assert not torch.allclose(z_eval, z[0], atol=1e-3)


def test_engine_updates_the_target_by_ema_after_the_step(tmp_path, data_dir) -> None:
    config = TrainConfig(
        method="byol", method_args={"proj_hidden_dim": 64, "pred_hidden_dim": 64, "tau_base": 0.9},
        backbone="tiny", data="cifar10", data_dir=str(data_dir), train_subset=64, test_subset=32, batch_size=32, epochs=4,
        warmup_epochs=0, eval_every=None, run_dir=str(tmp_path), name="r", progress=False, device="cpu",
    )
    trainer = Trainer(config)
    method = trainer.method
    for step in range(2):
        old_target = {n: p.clone() for n, p in method.target_backbone.named_parameters()}
        old_online = {n: p.clone() for n, p in method.backbone.named_parameters()}
        batch = next(iter(trainer.loader.epoch(0)))
        trainer.train_step(batch.images, batch.index)
        trainer.state.step += 1
        tau = 1 - 0.1 * (math.cos(math.pi * step / trainer.total_steps) + 1) / 2
        for name, target in method.target_backbone.named_parameters():
            online = dict(method.backbone.named_parameters())[name]
            assert not torch.equal(online, old_online[name]) or online.ndim <= 1  # the online net moved
            torch.testing.assert_close(target, tau * old_target[name] + (1 - tau) * online, rtol=1e-6, atol=1e-7)
        if step == 1:
            # Parameters only, as the official code: the target's BN statistics are its own (its
            # train-mode passes with its own weights), not copies of the online network's.
            stats = [(n, b) for n, b in method.target_backbone.named_buffers() if n.endswith("running_mean")]
            online = dict(method.backbone.named_buffers())
            assert stats and all(not torch.equal(b, online[n]) for n, b in stats)


def test_ema_update_is_the_paper_formula() -> None:
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    before = [p.clone() for p in target.parameters()]
    ema_update(online, target, 0.7)
    for t, b, o in zip(target.parameters(), before, online.parameters()):
        torch.testing.assert_close(t, 0.7 * b + 0.3 * o)
    # Buffers are the target's own (BYOL's, MoCo's and DINO's official EMA averages parameters only).
    online_bn, target_bn = torch.nn.BatchNorm1d(3), torch.nn.BatchNorm1d(3)
    online_bn.running_mean.fill_(5.0)
    ema_update(online_bn, target_bn, 0.7)
    assert torch.equal(target_bn.running_mean, torch.zeros(3))


@pytest.mark.slow
def test_byol_learns_on_cifar10(tmp_path) -> None:
    """BYOL's trained backbones' mean kNN (2,000 CIFAR-10 test images) beats the mean of ten random-init backbones
    by its margin, and in every run its online projection does not collapse: the std of its normalized
    outputs stays above 0.5 / sqrt(d) (spread outputs give about 1 / sqrt(d), a collapsed one 0;
    SimSiam's Figure 2).

    Tiny backbone, heads of 1,024 (not 4,096) to keep the CPU run short, tau_base 0.99, LARS at
    base lr 1.0 per 256 images (solo-learn's CIFAR-10 value; the paper's ImageNet 0.2 moved the
    tiny network too little), 12 epochs of batch 64 on 5,000 images: 936 steps. BYOL's target needs
    steps: batch 256 (114 steps, 6 passes) measured +4.65 and +0.2 points at lr 1.0 and +1.7 and
    -0.75 at lr 0.2 (seeds 0 and 1, float32); 468 steps of batch 64 gave +3.43 over 3 seeds (2.5 SE
    for one seed, below the rule at any seed count up to 3), 936 give +4.02 (3.0 SE as the mean of
    3 seeds, the setting here; 1 or 2 seeds clear 3 SE by less than same-seed drift).
    Pinned: weight decay 1.5e-6 and tau_base 0.99, the defaults when the margin was first measured
    (the engine now takes BYOL's official 40-epoch preset for 30 epochs: 1e-6 and 0.97).
    Seeds, gains, spread and margin: EVIDENCE["byol"] in tests/learning.py. The projection's std
    x sqrt(d) measured 0.81-0.84 on every recorded seed: the 0.5 bound sits 0.3 below that and
    0.5 above a collapse, a margin of its own."""
    for seed, summary in enumerate(assert_learns("byol", tmp_path)):
        std, dim = output_std(summary)
        assert std > 0.5 / math.sqrt(dim), (seed, std * math.sqrt(dim))
