"""Every registered method, tested through the same engine: tests parametrized over the registry,
so a new method file is covered without anyone remembering to add it here."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import io
import math
import textwrap
import tokenize

import pytest
import torch

from selfsup import methods
from selfsup.augment import create_recipe
from selfsup.engine import TrainConfig, Trainer
from selfsup.nn import create_backbone

ALL = methods.available()
# The tiny convnet for every method, except those that need another kind of backbone (MAE masks a
# ViT's patch tokens): the smallest such backbone, with heads to match, so each test takes seconds.
BACKBONES = {"mae": ("vit_tiny", {"depth": 1, "embed_dim": 48, "num_heads": 3})}
METHOD_ARGS = {"mae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2}}


def test_registry_lists_the_methods() -> None:
    assert "simclr" in ALL
    assert all(methods.descriptions()[name] for name in ALL)


def undocumented_fields(cls: type) -> list[str]:
    """Fields of dataclass ``cls`` (its own and inherited) with no comment: neither on the field's
    own lines nor in a comment block directly above it. (``@dataclass`` writes a ``__doc__`` of
    its own, so a docstring proves nothing; the project documents each field with a comment.)"""
    missing = []
    for klass in cls.__mro__:
        if not dataclasses.is_dataclass(klass):
            continue
        source = textwrap.dedent(inspect.getsource(klass))
        tokens = tokenize.generate_tokens(io.StringIO(source).readline)
        commented = {token.start[0] for token in tokens if token.type == tokenize.COMMENT}
        lines = source.splitlines()
        for node in ast.parse(source).body[0].body:
            if not isinstance(node, ast.AnnAssign):
                continue
            own = any(line in commented for line in range(node.lineno, node.end_lineno + 1))
            above = node.lineno - 1 in commented and lines[node.lineno - 2].lstrip().startswith("#")
            if not (own or above):
                missing.append(f"{klass.__name__}.{node.target.id}")
    return missing


def test_the_documentation_check_can_fail() -> None:
    @dataclasses.dataclass
    class Partly:
        documented: int = 1  # a comment
        # a comment above
        also_documented: int = 2
        bare: int = 3

    assert undocumented_fields(Partly) == ["Partly.bare"]


@pytest.mark.parametrize("name", ALL)
def test_method_declares_paper_and_documented_defaults(name: str) -> None:
    cls = methods.get(name)
    assert "arXiv" in cls.paper, f"{name} must cite its paper"
    assert cls.__doc__ and cls.description
    config = cls.Config()
    assert dataclasses.is_dataclass(config) and isinstance(config, methods.MethodConfig)
    assert undocumented_fields(cls.Config) == [], f"{name}: every field of its Config needs a comment"
    config.validate()  # the paper's defaults are themselves valid


def test_every_train_config_field_is_documented() -> None:
    """docs/architecture.md promises it of TrainConfig too."""
    from selfsup.engine.config import TrainConfig as Config

    assert undocumented_fields(Config) == []


@pytest.mark.parametrize("name", ALL)
def test_forward_backward_on_real_images(name: str, cifar_small) -> None:
    train, _ = cifar_small
    torch.manual_seed(0)
    arch, backbone_args = BACKBONES.get(name, ("tiny", {}))
    method = methods.create(name, backbone=create_backbone(arch, 32, **backbone_args), **METHOD_ARGS.get(name, {}))
    choice = method.default_recipe(32)
    recipe = create_recipe(choice.name, 32, **choice.overrides)
    views = recipe(train.images[:16], torch.Generator().manual_seed(0))
    out = method(views, torch.arange(16) if method.needs_index else None)
    loss = out["loss"]
    assert loss.dim() == 0 and math.isfinite(float(loss))
    loss.backward()
    grads = [p.grad for p in method.backbone.parameters() if p.grad is not None]
    assert grads and any(float(g.abs().sum()) > 0 for g in grads), "the loss must reach the backbone"
    features = method.eval().representation(method.eval_transform(train.images[:4]))
    assert features.shape == (4, method.feature_dim)


@pytest.mark.parametrize("name", ALL)
def test_engine_trains_and_checkpoints_every_method(name: str, tmp_path, data_dir) -> None:
    arch, backbone_args = BACKBONES.get(name, ("tiny", {}))
    config = TrainConfig(
        method=name, method_args=METHOD_ARGS.get(name, {}), backbone=arch, backbone_args=backbone_args, data="cifar10", data_dir=str(data_dir), train_subset=96, test_subset=64,
        batch_size=32, epochs=2, max_steps=3, eval_every=None, run_dir=str(tmp_path), name="r",
        progress=False, device="cpu",
    )
    trainer = Trainer(config)
    before = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    summary = trainer.fit()
    assert summary["steps"] == 3
    after = trainer.method.state_dict()
    changed = [k for k in before if before[k].dtype.is_floating_point and not torch.equal(before[k], after[k])]
    assert any(k.startswith("backbone.") for k in changed), "the backbone must be trained"
    # The checkpoint restores every parameter and buffer (queues, banks, EMA targets).
    resumed = Trainer(config, resume=True)
    for key, value in resumed.method.state_dict().items():
        assert torch.equal(value, after[key]), key
