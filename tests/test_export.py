"""Export: the files load with strict=True into plain torchvision/timm models, built from the
lines recorded in the file's metadata, with selfsup made unimportable, and give selfsup's features."""

from __future__ import annotations

import json
import sys

import pytest
import torch

import selfsup
from selfsup.cli import main
from selfsup.eval.export import ExportError, export_backbone, read_export
from selfsup.nn import create_backbone

from .eval_runs import resnet18_run, tiny_run, vit_run


def plain_model_from_metadata(path) -> torch.nn.Module:
    """Run the file's own ``usage`` lines with only torch, torchvision, timm and safetensors, and
    ``import selfsup`` made to fail: what a user's plain script does."""
    import safetensors.torch
    import timm
    import torchvision

    _, metadata = read_export(path)
    namespace = {"torch": torch, "torchvision": torchvision, "timm": timm, "safetensors": safetensors, "path": str(path)}
    with pytest.MonkeyPatch.context() as patch:
        for name in [m for m in sys.modules if m == "selfsup" or m.startswith("selfsup.")]:
            patch.delitem(sys.modules, name)
        patch.setitem(sys.modules, "selfsup", None)  # any `import selfsup` now raises ImportError
        exec(metadata["usage"], namespace)  # noqa: S102 - the snippet the file documents
    return namespace["model"]


def features_equal(run, model: torch.nn.Module, size: int = 32) -> None:
    reference = selfsup.load_backbone(run, device="cpu")
    x = torch.randn(3, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, got = reference(x), model(x)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("fmt", ["torchvision", "timm"])
def test_resnet18_with_cifar_stem_loads_strictly_into_the_plain_model(tmp_path_factory, tmp_path, capsys, fmt) -> None:
    run = resnet18_run(tmp_path_factory)
    out = tmp_path / f"r18-{fmt}.safetensors"
    assert main(["export", str(run), "--format", fmt, "--out", str(out)]) == 0
    assert "strict=True" in capsys.readouterr().out
    tensors, metadata = read_export(out)
    assert not any(k.startswith("body.") or k.startswith("fc.") for k in tensors)
    assert json.loads(metadata["cifar_stem"]) is True
    assert "model.maxpool = torch.nn.Identity()" in metadata["patch"]
    assert metadata["method"] == "simclr" and json.loads(metadata["preprocess"])["image_size"] == 32
    model = plain_model_from_metadata(out)  # strict=True inside
    features_equal(run, model)


def test_the_features_differ_before_loading(tmp_path_factory) -> None:
    """Guards the test above: a plain model with the stem patched but its own weights does not
    give selfsup's features, so equality there comes from the loaded weights."""
    import torchvision

    run = resnet18_run(tmp_path_factory)
    plain = torchvision.models.resnet18()
    plain.fc = torch.nn.Identity()
    plain.conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    plain.maxpool = torch.nn.Identity()
    with pytest.raises(AssertionError):
        features_equal(run, plain.eval())


def test_vit_exports_to_timm_names_and_not_to_torchvision(tmp_path_factory, tmp_path) -> None:
    run = vit_run(tmp_path_factory)
    out = tmp_path / "vit.safetensors"
    assert main(["export", str(run), "--format", "timm", "--out", str(out)]) == 0
    _, metadata = read_export(out)
    assert "img_size=32" in metadata["build"] and "patch_size=4" in metadata["build"] and "depth=2" in metadata["build"]
    features_equal(run, plain_model_from_metadata(out))
    # The file also reloads through selfsup, as the registered backbone it came from.
    features_equal(run, selfsup.load_backbone(out, device="cpu"))
    assert main(["export", str(run), "--format", "torchvision", "--out", str(tmp_path / "no.safetensors")]) == 2


def test_tiny_backbone_has_no_torchvision_counterpart_but_round_trips_in_selfsup_format(tmp_path_factory, tmp_path, capsys) -> None:
    run = tiny_run(tmp_path_factory)
    assert main(["export", str(run), "--format", "torchvision", "--out", str(tmp_path / "x.safetensors")]) == 2
    assert "--format selfsup" in capsys.readouterr().err
    out = tmp_path / "tiny.safetensors"
    assert main(["export", str(run), "--format", "selfsup", "--out", str(out)]) == 0
    loaded = selfsup.load_backbone(out, device="cpu")
    assert not loaded.training
    features_equal(run, loaded)


def test_standard_stem_resnet50_needs_no_patch(tmp_path) -> None:
    import torchvision

    backbone = create_backbone("resnet50", image_size=96)
    with torch.no_grad():  # non-default BN statistics, so running stats must travel too
        for module in backbone.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
    out = export_backbone(backbone, "torchvision", tmp_path / "r50.safetensors")
    tensors, metadata = read_export(out)
    assert metadata["patch"] == "" and json.loads(metadata["cifar_stem"]) is False
    plain = torchvision.models.resnet50()
    plain.fc = torch.nn.Identity()
    plain.load_state_dict(tensors, strict=True)
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(plain.eval()(x), backbone.eval()(x), rtol=1e-5, atol=1e-5)


def test_layer_norm_resnet_documents_its_norm_layer(tmp_path) -> None:
    """CPC v2's ResNet uses layer norm: the recorded build line makes strict loading work."""
    backbone = create_backbone("resnet18", image_size=32, norm="ln").eval()
    out = export_backbone(backbone, "torchvision", tmp_path / "ln.safetensors")
    assert "GroupNorm(1, c)" in read_export(out)[1]["build"]
    model = plain_model_from_metadata(out)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), backbone(x), rtol=1e-5, atol=1e-5)


def test_unknown_encoder_and_bad_file_are_clear_errors(tmp_path_factory, tmp_path, capsys) -> None:
    run = tiny_run(tmp_path_factory)
    assert main(["export", str(run), "--encoder", "projector", "--out", str(tmp_path / "p.safetensors")]) == 2
    assert "Its backbones: backbone" in capsys.readouterr().err
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    with pytest.raises(ExportError, match="not a readable"):
        read_export(bad)


def test_preprocess_accepts_pil_tensors_and_other_sizes(tmp_path_factory) -> None:
    from PIL import Image

    model = selfsup.load_backbone(tiny_run(tmp_path_factory), device="cpu")
    images = torch.randint(0, 256, (2, 32, 32, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    from_tensor = model.preprocess(images)
    from_pil = model.preprocess([Image.fromarray(a) for a in images.numpy()])
    assert from_tensor.shape == (2, 3, 32, 32) and from_tensor.dtype == torch.float32
    torch.testing.assert_close(from_pil, from_tensor)
    # A 64 px image is resized to the run's 32 px as the loaders do, not fed at 64 px.
    assert model.preprocess(Image.fromarray(images[0].numpy()).resize((64, 64))).shape == (1, 3, 32, 32)
    # Normalized as ImageNet's statistics say: a mid-gray pixel maps to (0.5 - mean) / std.
    gray = model.preprocess(torch.full((1, 32, 32, 3), 128, dtype=torch.uint8))
    assert abs(float(gray[0, 0, 0, 0]) - (128 / 255 - 0.485) / 0.229) < 1e-5
