"""Continued pretraining (``--init``): weights from a torchvision or timm state dict written here,
from a selfsup run, and from a name (offline: a clear error; a file in torch's hub cache: used);
strict keys; heads fresh; EMA targets start from the init; the baseline is the initial backbone."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from selfsup.cli import main
from selfsup.engine import TrainConfig, Trainer, load_method
from selfsup.engine.init import read_init
from selfsup.errors import ConfigError

from .eval_runs import tiny_run, write_jpeg_folder


@pytest.fixture(scope="module")
def photos(tmp_path_factory) -> Path:
    """60 real CIFAR-10 JPEGs in 3 class folders (20 each)."""
    root = tmp_path_factory.mktemp("init") / "photos"
    write_jpeg_folder(root, per_class=20, classes=3)
    return root


def config(photos: Path, tmp_path: Path, init: str, **values) -> TrainConfig:
    base = dict(data=str(photos), init=init, image_size=32, batch_size=16, epochs=1, max_steps=1, device="cpu",
                run_dir=str(tmp_path), name="run", progress=False, eval_every=0,
                method_args={"proj_hidden_dim": 32, "proj_output_dim": 16})
    base.update(values)
    return TrainConfig(**base)


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a)


def test_torchvision_state_dict_starts_the_backbone_and_every_ema_target(photos, tmp_path) -> None:
    import torchvision

    torch.manual_seed(1)
    model = torchvision.models.resnet18()  # ImageNet layout: 7x7 stem, fc classifier
    path = tmp_path / "resnet18.pth"
    torch.save(model.state_dict(), path)
    expected = {f"body.{k}": v for k, v in model.state_dict().items() if not k.startswith("fc.")}
    trainer = Trainer(config(photos, tmp_path, str(path), method="byol"))
    try:
        backbone = trainer.method.backbone
        assert trainer.config.backbone == "resnet18" and backbone.build_args["cifar_stem"] is False  # read from the file
        assert same(backbone.state_dict(), expected)
        assert same(trainer.method.target_backbone.state_dict(), expected)  # BYOL's EMA target starts there too
        # The heads start fresh: the projector is the seed's initialization, equal to its target's.
        assert same(trainer.method.target_projector.state_dict(), trainer.method.projector.state_dict())
    finally:
        trainer.close()
    summary = trainer.fit()
    assert summary["init"] == str(path) and summary["steps"] == 1
    # The baseline of the run is the initial backbone, not a random one.
    initial, _, _ = load_method(tmp_path / "run", "cpu", random_init=True)
    assert same(initial.backbone.state_dict(), expected)
    assert same(initial.target_backbone.state_dict(), expected)


def test_timm_vit_state_dict_with_its_own_patch_grid(photos, tmp_path) -> None:
    import timm
    from safetensors.torch import save_file

    torch.manual_seed(2)
    model = timm.create_model("vit_tiny_patch16_224", depth=2, num_classes=5)  # 14 x 14 patches, a classifier
    path = tmp_path / "vit.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    weights = read_init(str(path))
    assert weights.backbone == "vit_tiny" and weights.backbone_args == {"in_channels": 3, "patch_size": 16, "depth": 2}
    assert weights.left_out == ["head.weight", "head.bias"]
    trainer = Trainer(config(photos, tmp_path, str(path), method="dino", batch_size=8,
                             method_args={"hidden_dim": 32, "bottleneck_dim": 16, "out_dim": 64}))
    try:
        got, teacher = trainer.method.backbone.state_dict(), trainer.method.teacher_backbone.state_dict()
        for key, value in model.state_dict().items():
            if key.startswith("head."):
                continue
            if key == "pos_embed":  # resampled to the run's 2 x 2 grid of 16 px patches at 32 px
                assert got["body.pos_embed"].shape == (1, 5, 192)
                assert torch.equal(got["body.pos_embed"][:, 0], value[:, 0])  # the class token's is kept
                continue
            assert torch.equal(got[f"body.{key}"], value), key
            assert torch.equal(teacher[f"body.{key}"], value), key  # DINO's teacher (its probe backbone) too
    finally:
        trainer.close()


def test_keys_are_matched_strictly_and_listed(photos, tmp_path) -> None:
    import torchvision

    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight_renamed"] = state.pop("layer1.0.conv1.weight")
    state["extra.weight"] = torch.zeros(3)
    path = tmp_path / "wrong.pth"
    torch.save(state, path)
    with pytest.raises(ConfigError) as caught:
        Trainer(config(photos, tmp_path, str(path)))
    message = str(caught.value)
    assert "missing keys: body.layer1.0.conv1.weight" in message
    assert "unexpected keys: body.layer1.0.conv1.weight_renamed, body.extra.weight" in message
    # A backbone argument the config sets is kept, so a stem that differs fails the same way.
    good = tmp_path / "good.pth"
    torch.save(torchvision.models.resnet18().state_dict(), good)
    with pytest.raises(ConfigError, match=r"shapes that differ \(file vs backbone\): body.conv1.weight \(64, 3, 7, 7\) vs \(64, 3, 3, 3\)"):
        Trainer(config(photos, tmp_path, str(good), backbone_args={"cifar_stem": True}))
    with pytest.raises(ConfigError, match="holds a resnet18 backbone but the config asks for backbone 'tiny'"):
        Trainer(config(photos, tmp_path, str(good), backbone="tiny"))


def test_a_selfsup_run_and_its_export_are_inits(tmp_path_factory, photos, tmp_path, capsys) -> None:
    run = tiny_run(tmp_path_factory)  # SimCLR, tiny net of width 8, trained on CIFAR-10
    trained, _, _ = load_method(run, "cpu")
    summary = Trainer(config(photos, tmp_path, str(run), name="from-run")).fit()
    assert summary["backbone"] == "tiny"
    initial, cfg, _ = load_method(tmp_path / "from-run", "cpu", random_init=True)
    assert cfg.backbone_args["width"] == 8 and same(initial.backbone.state_dict(), trained.backbone.state_dict())
    moved = tmp_path / "last.pt"  # a checkpoint file taken out of its run
    moved.write_bytes(sorted((run / "checkpoints").glob("step-*.pt"))[-1].read_bytes())
    assert same(read_init(str(moved)).state, trained.backbone.state_dict())
    export = tmp_path / "tiny.safetensors"
    assert main(["export", str(run), "--format", "selfsup", "--out", str(export)]) == 0
    weights = read_init(str(export))
    assert weights.backbone == "tiny" and same(weights.state, trained.backbone.state_dict())


def test_names_are_a_clear_error_offline_and_read_from_the_hub_cache(photos, tmp_path, monkeypatch, capsys) -> None:
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # an empty hub cache; SELFSUP_OFFLINE is set
    code = main(["train", "--data", str(photos), "--init", "torchvision:resnet18.IMAGENET1K_V1", "--run-dir",
                 str(tmp_path), "--device", "cpu"])
    message = capsys.readouterr().err
    assert code == 2 and "Traceback" not in message
    assert "needs a download, which is not possible here (SELFSUP_OFFLINE is set)" in message
    assert "torchvision.models.resnet18(weights='IMAGENET1K_V1').state_dict(), 'resnet18.pth'" in message
    assert "--init with its path" in message and "resnet18-f37072fd.pth" in message
    with pytest.raises(ConfigError, match=r"timm.create_model\('vit_small_patch16_224', pretrained=True\)"):
        read_init("timm:vit_small_patch16_224")
    # The file torchvision would download, already in torch's hub cache, is used without a download.
    cached = tmp_path / "torch" / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    torch.save(torchvision.models.resnet18().state_dict(), cached)
    weights = read_init("torchvision:resnet18.IMAGENET1K_V1")
    assert weights.backbone == "resnet18" and "body.layer4.1.bn2.running_var" in weights.state
