"""`selfsup attention`: the last block's [CLS] attention of a ViT run, rendered per head."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from selfsup.cli import main
from selfsup.engine import TrainConfig, Trainer
from selfsup.errors import ConfigError
from selfsup.eval.attention import cls_attention
from selfsup.nn import create_backbone


def test_cls_attention_equals_timm_unfused_attention() -> None:
    torch.manual_seed(0)
    backbone = create_backbone("vit_tiny", 32, depth=2).eval()
    images = torch.randn(2, 3, 40, 32)  # not square, and not the built size: dynamic_img_size
    got = cls_attention(backbone, images)
    # Reference: timm's own non-fused path, whose softmax weights pass through attn_drop.
    attn = backbone.body.blocks[-1].attn
    attn.fused_attn = False
    captured = []
    handle = attn.attn_drop.register_forward_hook(lambda module, args, out: captured.append(out))
    with torch.no_grad():
        backbone(images)
    handle.remove()
    reference = captured[0][:, :, 0, 1:].reshape(2, 3, 10, 8)
    assert got.shape == (2, 3, 10, 8)  # 3 heads, a 10 x 8 grid of 4 px patches
    torch.testing.assert_close(got, reference, rtol=1e-4, atol=1e-6)
    # [CLS] attends to itself too, so the patch weights of each head sum to just under 1.
    sums = got.sum(dim=(2, 3))
    assert bool((sums < 1).all()) and bool((sums > 0.5).all())


def test_cls_attention_refuses_a_convnet() -> None:
    with pytest.raises(ConfigError, match="ViT"):
        cls_attention(create_backbone("tiny", 32), torch.randn(1, 3, 32, 32))


def test_attention_command_renders_a_png(tmp_path, data_dir, capsys) -> None:
    config = TrainConfig(
        method="dino", backbone="vit_tiny", backbone_args={"depth": 2}, method_args={"out_dim": 64, "hidden_dim": 128},
        data="cifar10", data_dir=str(data_dir), train_subset=16, test_subset=16, batch_size=16, epochs=1,
        eval_every=None, run_dir=str(tmp_path), name="vit", progress=False, device="cpu",
    )
    Trainer(config).save_checkpoint()  # an untrained ViT run is enough to render its attention
    picture = np.zeros((48, 64, 3), dtype=np.uint8)
    picture[:, :32] = (200, 30, 30)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    out = tmp_path / "maps" / "attn.png"
    code = main(["attention", str(tmp_path / "vit"), "--image", str(tmp_path / "photo.png"), "--out", str(out), "--size", "48"])
    assert code == 0
    assert "3 heads, 12x12 patches of 4 px" in capsys.readouterr().out
    with Image.open(out) as rendered:
        assert rendered.format == "PNG" and rendered.width > 4 * rendered.height  # image, mean, 3 heads side by side

    assert main(["attention", str(tmp_path / "vit"), "--image", str(tmp_path / "missing.png"), "--out", str(out)]) == 2
    assert "cannot read --image" in capsys.readouterr().err
