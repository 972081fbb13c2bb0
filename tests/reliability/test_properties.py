"""Property-based: random configurations at the config parser and random images at the
augmentation recipes. Each call either works or raises the project's own error
(:class:`SelfsupError`, which the command line prints as one line); any other exception is a bug.
What is accepted must also make sense (:func:`_assert_sane`): every value given is kept, every
number is in its range, the method's config builds, and the config reads back unchanged from the
config.yaml a run writes.

Hypothesis is derandomized (``derandomize=True``: the examples are a function of the test's
source), so a failure found once is found again on every run, on every machine."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from selfsup.augment import create_recipe
from selfsup.augment.recipes import ViewSpec, available_recipes
from selfsup.config import from_dict, parse_overrides, safe_dump, safe_load
from selfsup.engine import TrainConfig, build_config
from selfsup.errors import SelfsupError
from selfsup.methods import available, get, make_config

FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]
METHOD_FIELDS = sorted({f.name for name in available() for f in dataclasses.fields(get(name).Config)})
VIEW_FIELDS = [f.name for f in dataclasses.fields(ViewSpec)]
# Plausible values first (they reach the deeper checks), then anything.
PLAUSIBLE = ["simclr", "digits", "tiny", "resnet18", "sgd", "lars", "adamw", "auto", "cpu", "linear", "sqrt",
             "fp32", "bf16", "multicrop", "byol", *available()]

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.floats(-2.0, 2.0), st.text(max_size=8), st.sampled_from(PLAUSIBLE),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.one_of(st.sampled_from(METHOD_FIELDS + VIEW_FIELDS), st.text(max_size=6)), inner, max_size=3)
    ),
    max_leaves=6,
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(max_size=10), st.integers(-2, 2))


def _works_or_selfsup_error(call, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
    name = getattr(call, "__name__", type(call).__name__)
    try:
        result = call(*args, **kwargs)
    except SelfsupError as _e:
        event(f"{name}: SelfsupError {str(_e)[:50]}")
        return None
    event(f"{name}: works")
    return result


_DICT_FIELDS = ("method_args", "backbone_args", "augment")


def _assert_sane(given: dict, resolved: TrainConfig) -> None:
    """What resolves is complete, keeps what was given, and makes sense."""
    # Every value given is kept (None means "the default"); dicts keep every key given.
    for key, value in given.items():
        if value is None:
            continue
        if key in _DICT_FIELDS:
            for inner, inner_value in value.items():
                assert getattr(resolved, key)[inner] == inner_value, (key, inner)
        else:
            kept = getattr(resolved, key)
            assert kept == (tuple(value) if isinstance(kept, tuple) else value), (key, value, kept)
    # Nothing is left unresolved that the trainer needs, and every number is in its range.
    r = resolved
    assert r.optimizer in ("sgd", "lars", "adamw") and r.backbone and isinstance(r.epochs, int)
    for field in dataclasses.fields(TrainConfig):
        value = getattr(r, field.name)
        assert not isinstance(value, float) or math.isfinite(value), field.name
    for name in ("epochs", "batch_size", "max_image_pixels", "lr", "knn_temperature", "log_every"):
        assert getattr(r, name) > 0, name
    # knn_k None: chosen from the kNN bank when it is known (eval.knn.choose_k)
    for name in ("max_steps", "train_subset", "test_subset", "image_size", "grad_clip", "knn_k"):
        assert getattr(r, name) is None or getattr(r, name) > 0, name
    for name in ("weight_decay", "num_workers", "checkpoint_every", "checkpoint_every_steps"):
        assert getattr(r, name) >= 0, name
    for name in ("weight_decay_end", "eval_every"):
        assert getattr(r, name) is None or getattr(r, name) >= 0, name
    assert 0 <= r.momentum < 1 and 0 <= r.min_lr_ratio <= 1 and r.keep_checkpoints >= 1 and 0 <= r.val_fraction < 1
    # (A warmup longer than the run is allowed: `--config simclr_cifar10 --epochs 2` is a fair smoke test.)
    assert 0 <= r.warmup_epochs
    assert 0 <= r.seed < 2**32  # what numpy and torch's generators take (with room for per-epoch seeds)
    # The method's own config builds from what resolved, and the config reads back unchanged
    # from the YAML a run writes (resume reads it).
    make_config(resolved.method, resolved.method_args).validate()
    assert resolved.resolve() == resolved
    assert from_dict(TrainConfig, safe_load(safe_dump(resolved.to_dict())), "config.yaml") == resolved


def _given(data: dict) -> dict:
    """The TrainConfig values of ``data`` (what build_config reads from a mapping)."""
    out = dict(data)
    for short, long in (("method", "method_args"), ("backbone", "backbone_args")):
        if isinstance(out.get(short), dict):
            out[long] = {**out.get(long, {}), **out.pop(short)}
    return out


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(keys, values, max_size=6), st.dictionaries(st.sampled_from(METHOD_FIELDS), values, max_size=3))
def test_random_config_values_resolve_or_raise_selfsup_error(data, method_args) -> None:
    if method_args:
        data = {**data, "method_args": method_args}
    config = _works_or_selfsup_error(build_config, None, data)
    if config is not None:
        resolved = _works_or_selfsup_error(config.resolve)
        if resolved is not None:
            _assert_sane(data, resolved)


NUMERIC_FIELDS = [f.name for f in dataclasses.fields(TrainConfig) if {"int", "float"} & set(str(f.type).replace("|", " ").split())]
numbers = st.one_of(
    st.integers(-3, 12), st.integers(-(2**66), 2**66), st.floats(-2.0, 20.0), st.sampled_from([0, 0.0, 1, 1.0, 1e-300, 1e300]),
    st.none(),
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(available()), st.dictionaries(st.sampled_from(NUMERIC_FIELDS), numbers, min_size=1, max_size=4))
def test_random_numbers_that_resolve_are_in_range(method, numbers) -> None:
    """Numbers only, on a valid base, so that most examples resolve and the ranges are tested."""
    data = {"method": method, "data": "digits", **numbers}
    config = _works_or_selfsup_error(build_config, None, data)
    resolved = config and _works_or_selfsup_error(config.resolve)
    if resolved is not None:
        _assert_sane(data, resolved)


override_keys = st.one_of(
    st.sampled_from(FIELDS), st.sampled_from([f"method.{k}" for k in METHOD_FIELDS]),
    st.sampled_from([f"augment.{k}" for k in VIEW_FIELDS]), st.text(max_size=12),
)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(st.tuples(override_keys, st.text(max_size=12)).map("=".join), st.text(max_size=14)), max_size=5))
def test_random_command_line_overrides_resolve_or_raise_selfsup_error(overrides) -> None:
    config = _works_or_selfsup_error(build_config, None, None, overrides)
    if config is not None:
        resolved = _works_or_selfsup_error(config.resolve)
        if resolved is not None:
            _assert_sane(_given(parse_overrides(overrides)), resolved)


RECIPE_KEYS = VIEW_FIELDS + ["num_local", "local_size", "global_scale", "local_scale", "patch_size", "stride", "channel_drop_p", "bogus"]
small = st.one_of(
    st.integers(-2, 40), st.floats(-1.5, 1.5), st.sampled_from([0.0, 1.0, 0.5, float("nan"), float("inf")]),
    st.tuples(st.floats(-0.5, 1.5), st.floats(-0.5, 1.5)), st.tuples(st.integers(0, 2), st.integers(0, 2), st.integers(0, 2)),
    st.booleans(), st.none(), st.text(max_size=3),
)
layout = st.tuples(st.integers(0, 4), st.integers(0, 24), st.integers(0, 24), st.just(3))
shapes = st.one_of(layout, layout, layout, st.lists(st.integers(0, 6), max_size=5).map(tuple))  # mostly (B, H, W, 3)


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(available_recipes()), st.one_of(st.integers(4, 40), st.integers(-4, 3)),
    st.one_of(st.just({}), st.dictionaries(st.sampled_from(RECIPE_KEYS), small, max_size=3)),
    shapes, st.sampled_from(["uint8", "uint8", "uint8", "uint8", "uint8", "uint8", "float32", "int64", "bool", "float16", "numpy", "list"]),
    st.integers(0, 2**31 - 1),
)
@example("cpc_patches", 4, {"patch_size": 1}, (2, 4, 4, 3), "uint8", 0)  # found: 1 px patches gave NaN views
@example("multicrop", 8, {"global_scale": 0}, (2, 8, 8, 3), "uint8", 0)  # found: TypeError in the builder
@example("byol", 8, {"count": 0}, (2, 8, 8, 3), "uint8", 0)  # found: a recipe of no view
@example("cmc_lab", 8, {}, (), "list", 0)  # found: TypeError before the input check
def test_random_images_at_recipes_work_or_raise_selfsup_error(name, image_size, overrides, shape, kind, seed) -> None:
    recipe = _works_or_selfsup_error(create_recipe, name, image_size, **overrides)
    if recipe is None:
        return
    generator = torch.Generator().manual_seed(seed)
    if kind in ("numpy", "list"):
        array = np.zeros(shape, dtype=np.uint8)
        images = array if kind == "numpy" else array.tolist()
    elif kind == "uint8":
        images = torch.randint(0, 256, shape, dtype=torch.uint8, generator=generator)
    else:
        images = torch.zeros(shape, dtype=getattr(torch, kind))
    views = _works_or_selfsup_error(recipe, images, generator)
    if views is None:
        return
    assert len(views) >= 1
    for view in views:  # what a recipe accepts, it augments into finite float views of every image
        assert view.is_floating_point() and view.shape[0] == shape[0] and bool(torch.isfinite(view).all())


method_values = st.one_of(st.integers(1, 8), st.integers(-2, 0), st.floats(-1.0, 2.0), st.booleans(), st.none(), st.sampled_from(["ln", "bn", "x"]))


def _own_fields(method: str) -> st.SearchStrategy:
    names = [f.name for f in dataclasses.fields(get(method).Config)] or ["none"]
    return st.tuples(st.just(method), st.dictionaries(st.sampled_from(names), method_values, max_size=3))


@settings(max_examples=200, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(available()).flatmap(_own_fields),
    st.dictionaries(st.sampled_from(["width", "norm", "widht"]), method_values, max_size=2),
)
def test_random_method_and_backbone_arguments_build_or_raise_selfsup_error(method_and_args, backbone_args) -> None:
    """One step further than resolve(): the networks are built (tiny backbone), as the trainer
    does before any training."""
    from selfsup.engine.trainer import build_method

    method, method_args = method_and_args

    config = _works_or_selfsup_error(
        build_config, None, {"method": method, "backbone": "tiny", "data": "digits", "method_args": method_args,
                             "backbone_args": backbone_args},
    )
    resolved = config and _works_or_selfsup_error(config.resolve)
    if resolved is None:
        return
    _assert_sane({"method_args": method_args, "backbone_args": backbone_args}, resolved)
    built = _works_or_selfsup_error(build_method, resolved, 16)
    if built is None:
        return
    # What builds holds the values given (a misspelt key is refused, never dropped), and its
    # parameters are finite.
    for key, value in method_args.items():
        assert getattr(built.config, key) == value, (key, value, getattr(built.config, key))
    for key, value in backbone_args.items():
        assert built.backbone.build_args[key] == value, (key, value, built.backbone.build_args)
    params = list(built.parameters())
    assert params and all(bool(torch.isfinite(p).all()) for p in params)
