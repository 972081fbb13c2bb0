"""DINO (arXiv 2104.14294): the loss against a float64 loop transcription of the official
``DINOLoss``; centering, temperature and EMA schedules; the frozen last layer; per-parameter
clipping; a ViT trained in bf16 on the CPU; learning on real CIFAR-10 (slow)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup import methods
from selfsup.augment import create_recipe
from selfsup.engine import TrainConfig, Trainer
from selfsup.losses import dino_loss
from selfsup.methods import Progress
from selfsup.nn import create_backbone, ema_update

from .learning import assert_learns, output_std


def reference_dino_loss(student: list[np.ndarray], teacher: list[np.ndarray], center: np.ndarray, tau_s: float, tau_t: float) -> float:
    """``DINOLoss.forward`` of facebookresearch/dino (main_dino.py), sample by sample in float64."""

    def softmax(row: list[float]) -> list[float]:
        top = max(row)
        e = [math.exp(v - top) for v in row]
        return [v / sum(e) for v in e]

    total, terms = 0.0, 0
    for iq, t in enumerate(teacher):
        for v, s in enumerate(student):
            if v == iq:
                continue  # the same view in student and teacher
            loss = 0.0
            for b in range(t.shape[0]):
                q = softmax([(t[b][k] - center[k]) / tau_t for k in range(t.shape[1])])
                logits = [s[b][k] / tau_s for k in range(s.shape[1])]
                top = max(logits)
                log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
                loss += sum(-q[k] * (logits[k] - log_norm) for k in range(len(q)))
            total += loss / t.shape[0]
            terms += 1
    return total / terms


@pytest.mark.parametrize("views", [2, 3, 6])
def test_dino_loss_matches_official_loop(views: int) -> None:
    g = torch.Generator().manual_seed(views)
    student = [torch.randn(5, 11, generator=g) for _ in range(views)]
    teacher = [torch.randn(5, 11, generator=g) for _ in range(2)]
    center = torch.randn(11, generator=g) * 0.3
    expected = reference_dino_loss([s.double().numpy() for s in student], [t.double().numpy() for t in teacher], center.double().numpy(), 0.1, 0.04)
    got = dino_loss(student, teacher, center, 0.1, 0.04)
    assert got.dtype == torch.float32
    assert abs(float(got) - expected) < 2e-5 * max(1.0, abs(expected)), (float(got), expected)


def test_dino_loss_float32_under_bf16_and_no_gradient_to_teacher() -> None:
    g = torch.Generator().manual_seed(0)
    # Head outputs of a weight-normalized layer reach |x| ~ 1; at tau_t = 0.04 the logits reach 25
    # and their exp overflows bf16's precision, not its range: the loss must stay finite and match float32.
    student = [(torch.randn(8, 64, generator=g) * 3).requires_grad_() for _ in range(4)]
    teacher = [(torch.randn(8, 64, generator=g) * 3).requires_grad_() for _ in range(2)]
    center = torch.zeros(64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = dino_loss([s.bfloat16() for s in student], [t.bfloat16() for t in teacher], center, 0.1, 0.04)
    assert loss.dtype == torch.float32 and math.isfinite(float(loss))
    reference = dino_loss([s.bfloat16().float() for s in student], [t.bfloat16().float() for t in teacher], center, 0.1, 0.04)
    torch.testing.assert_close(loss, reference)
    loss.backward()
    assert all(s.grad is not None for s in student)
    assert all(t.grad is None for t in teacher), "the teacher is a target: stop-gradient"


def _dino(image_size: int = 32, backbone: str = "tiny", **config) -> methods.Method:
    """A DINO with a narrower head (hidden 512) unless asked otherwise: these tests check behaviour
    that does not depend on the width, and the CPU is shared."""
    torch.manual_seed(0)
    args = {"depth": 2} if backbone.startswith("vit") else {}
    config = {"hidden_dim": 512, **config}
    return methods.create("dino", backbone=create_backbone(backbone, image_size, **args), **config)


def _views(method, batch: int = 4, seed: int = 0, **recipe_overrides) -> list[torch.Tensor]:  # noqa: ANN001
    images = (torch.rand(batch, 32, 32, 3, generator=torch.Generator().manual_seed(seed)) * 255).to(torch.uint8)
    recipe = create_recipe("dino", 32, **recipe_overrides)
    return recipe(images, torch.Generator().manual_seed(seed))


def test_head_shape_weight_norm_and_teacher_copy() -> None:
    method = _dino(out_dim=64, hidden_dim=2048)  # the paper's head: hidden 2048, bottleneck 256
    head = method.head
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(128, 2048), (2048, 2048), (2048, 256)]
    assert not head.last_layer.weight_g.requires_grad, "norm_last_layer fixes the norm to 1"
    # The output is the cosine of the L2-normalized bottleneck with unit-norm rows: |x| <= 1.
    out = head(torch.randn(6, 128))
    assert out.shape == (6, 64) and out.dtype == torch.float32 and float(out.abs().max()) <= 1.0 + 1e-5
    for p_student, p_teacher in zip(method.head.parameters(), method.teacher_head.parameters()):
        assert torch.equal(p_student, p_teacher) and not p_teacher.requires_grad
    assert method.eval_backbone is method.teacher_backbone
    assert _dino().out_dim == 4096 and methods.get("dino").Config().out_dim is None
    assert methods.get("dino").Config().hidden_dim == 2048


def test_forward_leaves_center_alone_and_step_updates_it_with_teacher_mean() -> None:
    method = _dino(out_dim=32)
    method.center.copy_(torch.linspace(-1, 1, 32))
    start = method.center.clone()
    views = _views(method, num_local=2)
    method(views)
    assert torch.equal(method.center, start), "forward must not update the center"
    with torch.no_grad():
        teacher = method.teacher_head(method.teacher_backbone(torch.cat(views[:2])))
    method.after_optimizer_step(method.progress)
    # eq. 4: c <- m c + (1 - m) mean over the batch of the teacher's outputs on the global views.
    torch.testing.assert_close(method.center, 0.9 * start + 0.1 * teacher.mean(dim=0))
    method.after_optimizer_step(method.progress)  # nothing pending: no second update
    torch.testing.assert_close(method.center, 0.9 * start + 0.1 * teacher.mean(dim=0))


def test_teacher_temperature_and_momentum_schedules() -> None:
    # The README's boosted run (--teacher_temp 0.07 --warmup_teacher_temp_epochs 30); main_dino.py's
    # default is 0.04 with no warmup.
    assert _dino(out_dim=8).teacher_temperature(Progress(0, 1000, 10)) == pytest.approx(0.04)
    method = _dino(out_dim=8, teacher_temperature=0.07, warmup_teacher_temperature_epochs=30)
    per_epoch = 10

    def temperature(epoch: float) -> float:
        return method.teacher_temperature(Progress(int(epoch * per_epoch), 100 * per_epoch, per_epoch))

    # Official: np.linspace(0.04, 0.07, 30) indexed by the integer epoch, then 0.07.
    assert temperature(0) == pytest.approx(0.04)
    assert temperature(0.9) == pytest.approx(0.04)
    assert temperature(1) == pytest.approx(0.04 + 0.03 / 29)
    assert temperature(15) == pytest.approx(0.04 + 15 * 0.03 / 29)
    assert temperature(29) == pytest.approx(0.07)
    assert temperature(30) == temperature(99) == pytest.approx(0.07)
    # Teacher EMA: 1 - (1 - 0.996) (cos(pi t / T) + 1) / 2.
    assert method.ema_momentum(Progress(0, 1000)) == pytest.approx(0.996)
    assert method.ema_momentum(Progress(500, 1000)) == pytest.approx(0.998)
    assert method.ema_momentum(Progress(250, 1000)) == pytest.approx(1 - 0.004 * (math.cos(math.pi / 4) + 1) / 2)
    assert method.ema_momentum(Progress(1000, 1000)) == pytest.approx(1.0)


def test_teacher_follows_the_student_by_ema() -> None:
    method = _dino(out_dim=16)
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    teacher_before = [p.clone() for p in method.teacher_backbone.parameters()]
    method(_views(method, num_local=1))["loss"].backward()
    optimizer.step()
    for online, target in method.ema_pairs():
        ema_update(online, target, 0.99)
    changed = 0
    for old, student, teacher in zip(teacher_before, method.backbone.parameters(), method.teacher_backbone.parameters()):
        torch.testing.assert_close(teacher, 0.99 * old + 0.01 * student)
        changed += int(not torch.equal(teacher, old))
    assert changed > 0


def test_gradients_clipped_per_parameter_and_last_layer_frozen_in_first_epoch() -> None:
    method = _dino(out_dim=16, clip_grad=0.01)
    method(_views(method, num_local=1))["loss"].backward()
    raw = {name: p.grad.norm().item() for name, p in method.named_parameters() if p.grad is not None}
    method.before_optimizer_step(Progress(0, 10, 5))  # epoch 0
    assert method.head.last_layer.weight_v.grad is None
    for name, p in method.named_parameters():
        if p.grad is not None:
            expected = min(raw[name], 0.01)
            assert p.grad.norm().item() == pytest.approx(expected, rel=1e-3, abs=1e-7), name
    method.zero_grad()
    method(_views(method, num_local=1))["loss"].backward()
    method.before_optimizer_step(Progress(5, 10, 5))  # epoch 1: the last layer trains
    assert method.head.last_layer.weight_v.grad is not None


def _dino_config(tmp_path, data_dir, name: str, **overrides) -> TrainConfig:
    values = dict(
        method="dino", backbone="tiny", data="cifar10", data_dir=str(data_dir), train_subset=64, test_subset=64,
        batch_size=32, epochs=1, eval_every=None, run_dir=str(tmp_path), name=name, progress=False, device="cpu",
        augment={"num_local": 2}, method_args={"out_dim": 256, "hidden_dim": 512},
    )
    values.update(overrides)
    return TrainConfig(**values)


def test_dino_defaults_per_backbone() -> None:
    """ViTs: main_dino.py's AdamW recipe with the student's stochastic depth 0.1; convnets: the
    README's ResNet-50 command (SGD 0.03, constant weight decay 1e-4, crops 0.14-1 / 0.05-0.14)."""
    vit = TrainConfig(method="dino", backbone="vit_tiny", data="digits").resolve()
    assert (vit.optimizer, vit.lr, vit.weight_decay, vit.weight_decay_end, vit.min_lr) == ("adamw", 5e-4, 0.04, 0.4, 1e-6)
    assert vit.backbone_args["drop_path_rate"] == 0.1
    convnet = TrainConfig(method="dino", backbone="resnet50", data="digits").resolve()
    assert (convnet.optimizer, convnet.lr, convnet.weight_decay, convnet.weight_decay_end) == ("sgd", 0.03, 1e-4, None)
    method = methods.create("dino", backbone=create_backbone("resnet18", 224), out_dim=64)
    choice = method.default_recipe(224)
    assert (choice.overrides["global_scale"], choice.overrides["local_scale"]) == ((0.14, 1.0), (0.05, 0.14))


def test_teacher_has_no_stochastic_depth() -> None:
    backbone = create_backbone("vit_tiny", 32, depth=2, drop_path_rate=0.1)
    method = methods.create("dino", backbone=backbone, out_dim=64, hidden_dim=64)
    student = [m.drop_prob for m in method.backbone.modules() if hasattr(m, "drop_prob")]
    teacher = [m.drop_prob for m in method.teacher_backbone.modules() if hasattr(m, "drop_prob")]
    assert student and max(student) > 0 and teacher and max(teacher) == 0.0
    method.train()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():  # the teacher is deterministic in training mode (no dropped paths)
        assert torch.equal(method.teacher_backbone(x), method.teacher_backbone(x))


def test_engine_picks_dino_optimizer_defaults_and_freezes_last_layer(tmp_path, data_dir) -> None:
    trainer = Trainer(_dino_config(tmp_path, data_dir, "frozen"))  # 2 steps, both in epoch 0
    config = trainer.config
    assert (config.optimizer, config.lr, config.weight_decay, config.weight_decay_end) == ("sgd", 0.03, 1e-4, None)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    trainer.fit()
    after = trainer.method.state_dict()
    assert torch.equal(after["head.last_layer.weight_v"], before["head.last_layer.weight_v"])
    assert not torch.equal(after["head.mlp.0.weight"], before["head.mlp.0.weight"])
    assert not torch.equal(after["teacher_backbone.body.0.weight"], before["teacher_backbone.body.0.weight"])
    assert not torch.equal(after["center"], before["center"])


def test_vit_trains_in_bf16_on_cpu_without_nan(tmp_path, data_dir) -> None:
    """A ViT (timm, patch 4, dynamic size: 32 px global and 16 px local crops) trained a few steps
    under bf16 autocast on the CPU: the backbone really runs in bf16, and loss and weights stay finite."""
    config = _dino_config(
        tmp_path, data_dir, "vit", backbone="vit_tiny", backbone_args={"depth": 2}, precision="bf16",
        batch_size=16, train_subset=32, epochs=2, max_steps=3,  # step 3 is in epoch 1: the last layer trains too
        method_args={"out_dim": 256, "hidden_dim": 512},
    )
    trainer = Trainer(config)
    dtypes: list[torch.dtype] = []
    first_linear = trainer.method.backbone.body.blocks[0].attn.qkv
    first_linear.register_forward_hook(lambda module, args, out: dtypes.append(out.dtype))
    summary = trainer.fit()
    assert summary["steps"] == 3 and summary["skipped_steps"] == 0
    assert dtypes and set(dtypes) == {torch.bfloat16}, "autocast must be active on the CPU with precision=bf16"
    assert all(torch.isfinite(p).all() for p in trainer.method.parameters())
    assert all(torch.isfinite(b).all() for b in trainer.method.buffers())
    losses = [line for line in (trainer.run_dir / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert losses and all("NaN" not in line and "Infinity" not in line for line in losses)


@pytest.mark.slow
def test_dino_learns_on_cifar10(tmp_path) -> None:
    """DINO's trained backbones' mean kNN (2,000 CIFAR-10 test images) beats the mean of ten random-init backbones
    by its margin, and in every run its teacher embedding does not collapse.

    ResNet-style tiny backbone, 2 global 32 px + 2 local 16 px crops, out_dim 4,096 at CIFAR scale,
    30 epochs of batch 64 on 1,000 images (450 steps), teacher EMA 0.99 (cosine to 1): the paper's
    0.996 averages over about 250 steps, half of this run; its 4 seeds (bf16) averaged 0.8 points
    below EMA 0.99's (float32), with a spread that kept the test below 3 standard errors (BENCHMARKS.md, "DINO reaches the
    bar"). With 6 epochs of batch 256 on 5,000 images (114 steps, the same image passes) the float32
    gains were +3.1 and +1.75 (teacher EMA 0.99: +3.65, seed 0): the teacher needs steps to move.
    Pinned: the defaults when the margin was first measured (AdamW 5e-4, weight decay 0.04 -> 0.4,
    cosine to 0 after 3 warmup epochs, teacher temperature 0.04 -> 0.07 over 30 epochs, crops of
    scale (0.4, 1) and (0.05, 0.4)); on a convnet and at 32 px the method now defaults to the
    official ResNet-50 command (SGD 0.03) and to two crops of scale (0.08, 1).

    The kNN gain alone does not rule out a collapse: without centering (center_momentum 1.0, the
    center stays 0) the same run gained +8.2 points while its head collapsed to one dimension
    (loss 0.08, every image the same one-hot teacher output: the paper's collapse study). The
    monitor is the std over 1,000 test images of each channel of the teacher's L2-normalized
    bottleneck (tests/learning.py::output_std): 0.27-0.32 / sqrt(d) with centering (float32,
    seeds 0-2), 0.09 / sqrt(d) for that collapse. The bound 0.18 / sqrt(d) sits about half way
    between the collapse and the lowest healthy value. Seeds, gains, spread and margin:
    EVIDENCE["dino"] in tests/learning.py."""
    for seed, summary in enumerate(assert_learns("dino", tmp_path)):
        std, dim = output_std(summary)
        assert std > 0.18 / math.sqrt(dim), (seed, std * math.sqrt(dim))
