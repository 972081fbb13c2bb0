"""Every bundled recipe builds the objects of the published recipe it names (issue 13).

For each bundled config, the table below holds values typed from the source the config cites (the
file and flag are named beside each entry); the test builds the real objects through
``selfsup.engine.build`` (the method, its view recipe, the optimizer and its parameter groups, the
per-step schedules) on the meta device, with the training-set size of the dataset (CIFAR-10:
50,000; ImageNet-1k: 1,281,167), and compares what they hold, never the YAML text. The checked
values are those ``selfsup train --dry-run --json`` prints (``Built.describe``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from selfsup.cli import main as cli
from selfsup.engine import build, build_config
from selfsup.engine.build import IMAGENET_TRAIN_SAMPLES
from selfsup.engine.config import CONFIG_DIR, build_run_config
from selfsup.methods import available

CIFAR = (50_000, 32)
IMAGENET = (IMAGENET_TRAIN_SAMPLES, 256)

# Colour jitter of the SimCLR "strength 1" distortion (SimCLR appendix A; solo-learn symmetric.yaml;
# SwAV get_color_distortion(s=1.0)) and of MoCo v2 / BYOL.
STRONG = {"brightness": 0.8, "contrast": 0.8, "saturation": 0.8, "hue": 0.2}
WEAK = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.1}
BYOL_JITTER = {"brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1}

# solo-learn's LARS setting of every CIFAR recipe that uses LARS (kwargs eta 0.02, clip_lr True,
# exclude_bias_n_norm True; solo/utils/lars.py's ratio), and its scheduler defaults
# (solo/methods/base.py: warmup 10 epochs from 3e-5, cosine to 0, per step).
SOLO_LARS = [
    {"lars_adapted": True, "lars_eta": 0.02, "lars_clip_lr": True, "lars_trust": "larc"},
    {"lars_adapted": False, "weight_decay": 0.0},
]


def solo_lr(peak: float) -> dict[str, Any]:
    return {"warmup_epochs": 10, "lr": {"start": 3e-5, "end_of_warmup": peak, "end": 0.0}}


EXPECTED: dict[str, dict[str, Any]] = {
    # solo-learn scripts/pretrain/cifar/simclr.yaml (+ augmentations/symmetric.yaml, solo/methods/simclr.py)
    "simclr_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000, "steps_per_epoch": 195},
        "optimizer": {"class": "LARS", "peak_lr": 0.4, "momentum": 0.9, "groups": [{"weight_decay": 1e-4, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.4), "weight_decay": {"constant": 1e-4}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 32, "crop_scale": [0.08, 1.0], "flip_p": 0.5, "jitter_p": 0.8, **STRONG,
                                                "grayscale_p": 0.2, "blur_p": 0.5, "solarize_p": 0.0}]},
        "method_details": {"temperature": 0.2, "projector": {"dims": [512, 2048, 256], "batch_norms": 0, "last_bn": None}},
        "ema_momentum": None,
    },
    # solo-learn scripts/pretrain/cifar/barlow.yaml (+ augmentations/asymmetric.yaml, solo/methods/barlow_twins.py)
    "barlow_twins_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.3, "groups": [{"weight_decay": 1e-4, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.3), "weight_decay": {"constant": 1e-4}},
        "views": {"name": "byol", "views": [
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.0},
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.2},
        ]},
        "method_details": {"lambda": 0.0051, "scale_loss": 0.1, "projector": {"dims": [512, 2048, 2048, 2048], "batch_norms": 2}},
        "ema_momentum": None,
    },
    # solo-learn scripts/pretrain/cifar/vicreg.yaml (its own augmentations list; solo/methods/vicreg.py)
    "vicreg_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.3, "groups": [{"weight_decay": 1e-4, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.3), "weight_decay": {"constant": 1e-4}},
        "views": {"views": [
            {"count": 1, "size": 32, "crop_scale": [0.2, 1.0], "flip_p": 0.5, "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.1},
            {"count": 1, "size": 32, "crop_scale": [0.2, 1.0], "flip_p": 0.5, "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.1},
        ]},
        "method_details": {"weights": [25.0, 25.0, 1.0], "projector": {"dims": [512, 2048, 2048, 2048], "batch_norms": 2}},
        "ema_momentum": None,
    },
    # facebookresearch/mae main_pretrain.py, PRETRAIN.md, models_mae.py at solo-learn's CIFAR scale (scripts/pretrain/cifar/mae.yaml)
    "mae_cifar10": {
        "backbone": "vit_small",
        "backbone_args": {"patch_size": 4, "image_size": 32},
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "AdamW", "peak_lr": 1.5e-4, "groups": [
            {"weight_decay": 0.05, "betas": [0.9, 0.95]}, {"weight_decay": 0.0, "betas": [0.9, 0.95]}]},
        "schedule": {"warmup_epochs": 50, "lr": {"start": 0.0, "end_of_warmup": 1.5e-4, "end": 0.0}, "weight_decay": {"constant": 0.05}},
        "views": {"views": [{"count": 1, "size": 32, "crop_scale": [0.2, 1.0], "flip_p": 0.5, "jitter_p": 0.0, "grayscale_p": 0.0,
                             "blur_p": 0.0, "solarize_p": 0.0}]},
        "method_details": {"mask_ratio": 0.75, "patch_size": 4, "normalize_target": True,
                           "decoder": {"dim": 512, "depth": 8, "heads": 16, "outputs": 48}},
        "ema_momentum": None,
    },
    # solo-learn scripts/pretrain/cifar/byol.yaml (+ augmentations/asymmetric.yaml)
    "byol_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 1.0, "groups": [{"weight_decay": 1e-5, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(1.0), "weight_decay": {"constant": 1e-5}},
        "views": {"name": "byol", "views": [
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.0},
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], "jitter_p": 0.8, **BYOL_JITTER, "grayscale_p": 0.2, "blur_p": 0.0, "solarize_p": 0.2},
        ]},
        "method_details": {"tau_base": 0.99, "projector": {"dims": [512, 4096, 256]}, "predictor": {"dims": [256, 4096, 256]}},
        "ema_momentum": {"start": 0.99, "end": 1.0},  # momentum.base_tau 0.99, final_tau 1.0
    },
    # solo-learn scripts/pretrain/cifar/mocov2plus.yaml (+ symmetric_weak.yaml, solo/methods/mocov2plus.py)
    "moco_v2_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "SGD", "peak_lr": 0.3, "momentum": 0.9, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {**solo_lr(0.3), "weight_decay": {"constant": 1e-4}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 32, "crop_scale": [0.08, 1.0], "jitter_p": 0.8, **WEAK,
                                                "grayscale_p": 0.2, "blur_p": 0.5, "solarize_p": 0.0}]},
        "method_details": {"temperature": 0.2, "queue_size": 32768, "queues": 2, "symmetric": True, "embed_dim": 256,
                           "head": {"dims": [512, 2048, 256], "batch_norms": 0}},
        "ema_momentum": {"start": 0.99, "end": 0.999},  # momentum.base_tau 0.99 -> final_tau 0.999
    },
    # facebookresearch/moco colab/moco_cifar10_demo.ipynb (its printed Namespace)
    "moco_v1_cifar10": {
        "data": {"batch_size": 512, "epochs": 200},
        "optimizer": {"class": "SGD", "peak_lr": 0.06, "momentum": 0.9, "groups": [{"weight_decay": 5e-4}]},
        "schedule": {"lr_schedule": "cosine", "warmup_steps": 0, "lr": {"start": 0.06, "end": 0.0}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 32, "crop_scale": [0.08, 1.0], "flip_p": 0.5, "jitter_p": 0.8, **WEAK,
                                                "grayscale_p": 0.2, "grayscale_first": False, "blur_p": 0.0}]},
        "method_details": {"temperature": 0.1, "queue_size": 4096, "queues": 1, "embed_dim": 128, "shuffle_bn_groups": 8,
                           "head": {"dims": [512, 128]}},
        "ema_momentum": {"start": 0.99, "end": 0.99},
    },
    # solo-learn scripts/pretrain/cifar/mocov3.yaml (+ asymmetric.yaml, solo/methods/mocov3.py)
    "moco_v3_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.3, "groups": [{"weight_decay": 1e-6, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.3), "weight_decay": {"constant": 1e-6}},
        "views": {"name": "byol", "views": [
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], **BYOL_JITTER, "blur_p": 0.0, "solarize_p": 0.0},
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], **BYOL_JITTER, "blur_p": 0.0, "solarize_p": 0.2},
        ]},
        "method_details": {"temperature": 0.2, "projector": {"dims": [512, 4096, 256], "last_bn": "plain"},
                           "predictor": {"dims": [256, 4096, 256], "last_bn": None}},
        "ema_momentum": {"start": 0.99, "end": 1.0},
    },
    # solo-learn scripts/pretrain/cifar/simsiam.yaml (+ symmetric_weak.yaml, solo/methods/simsiam.py)
    "simsiam_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "SGD", "peak_lr": 0.5, "groups": [
            {"weight_decay": 1e-5, "lr_scheduled": True}, {"weight_decay": 1e-5, "lr_scheduled": False, "lr": 0.5}]},
        "schedule": {**solo_lr(0.5)},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 32, "crop_scale": [0.08, 1.0], **WEAK, "blur_p": 0.5}]},
        "method_details": {"projector": {"dims": [512, 2048, 2048, 2048], "batch_norms": 3, "last_bn": "plain"},
                           "predictor": {"dims": [2048, 512, 2048]}},
    },
    # solo-learn scripts/pretrain/cifar/swav.yaml (+ symmetric.yaml)
    "swav_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.6, "groups": [{"weight_decay": 1e-6, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.6)},
        "views": {"name": "multicrop", "views": [
            {"count": 2, "size": 32, "crop_scale": [0.08, 1.0], **STRONG, "grayscale_p": 0.2, "blur_p": 0.5}, {"count": 0}]},
        "method_details": {"temperature": 0.1, "num_prototypes": 3000, "queue_length": 3840, "queue_start_epoch": 50,
                           "freeze_prototypes_epochs": 2, "epsilon": 0.05, "sinkhorn_iterations": 3,
                           "projector": {"dims": [512, 2048, 128]}},
    },
    # solo-learn scripts/pretrain/cifar/dino.yaml (+ asymmetric.yaml, solo/methods/dino.py defaults)
    "dino_cifar10": {
        "data": {"batch_size": 256, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.3, "groups": [{"weight_decay": 1e-6, **SOLO_LARS[0]}, SOLO_LARS[1]]},
        "schedule": {**solo_lr(0.3), "weight_decay": {"constant": 1e-6}},
        "views": {"name": "dino", "views": [
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], **BYOL_JITTER, "blur_p": 0.0, "solarize_p": 0.0},
            {"count": 1, "size": 32, "crop_scale": [0.08, 1.0], **BYOL_JITTER, "blur_p": 0.0, "solarize_p": 0.2},
            {"count": 0},
        ]},
        "method_details": {"out_dim": 4096, "head": {"dims": [512, 2048, 2048, 256], "batch_norms": 0}, "norm_last_layer": True,
                           "student_temperature": 0.1, "teacher_temperature": {"start": 0.07, "final": 0.07}, "clip_grad": 0.0,
                           "freeze_last_layer_epochs": 1},
        "ema_momentum": {"start": 0.9995, "end": 1.0},
    },
    # zhirongw/lemniscate.pytorch cifar.py (+ README: --nce-k 0 --nce-t 0.1 --lr 0.03)
    "instdisc_cifar10": {
        "data": {"batch_size": 128, "epochs": 200, "steps_per_epoch": 390},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "momentum": 0.9, "groups": [{"weight_decay": 5e-4}]},
        # lr * 0.1 ** ((epoch - 80) // 40) from epoch 80: x0.1 at epochs 120 and 160
        "schedule": {"lr_schedule": "step", "milestone_steps": [120 * 390, 160 * 390], "lr": {"start": 0.03, "end": 0.0003}},
        "views": {"name": "simclr", "views": [{"count": 1, "size": 32, "crop_scale": [0.2, 1.0], "flip_p": 0.0, "jitter_p": 1.0,
                                                "brightness": 0.4, "contrast": 0.4, "saturation": 0.4, "hue": 0.4,
                                                "grayscale_p": 0.2, "grayscale_first": False}]},
        "method_details": {"loss": "softmax", "temperature": 0.1, "bank": [50_000, 128], "bank_momentum": 0.5},
    },
    # HobbitLong/CMC train_CMC.py (0f2b643) defaults and README flags, on CIFAR-10
    "cmc_cifar10": {
        "data": {"batch_size": 256, "epochs": 400},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {"lr_schedule": "step", "milestone_steps": [250 * 195, 300 * 195, 350 * 195], "lr": {"start": 0.03}},
        "views": {"name": "cmc_lab", "views": [{"count": 1, "size": 32, "crop_scale": [0.08, 1.0], "flip_p": 0.5}]},
        "method_details": {"contrast": "nce", "num_negatives": 4096, "temperature": 0.1, "bank_momentum": 0.5,
                           "banks": [[50_000, 128], [50_000, 128]], "width": 0.5},
    },
    # CPC v2 (arXiv 1905.09272) section 4.1, appendix A
    "cpc_cifar10": {
        "data": {"batch_size": 512},
        "optimizer": {"class": "AdamW", "peak_lr": 4e-4, "groups": [{"weight_decay": 0.0}, {"weight_decay": 0.0}]},
        "views": {"name": "cpc_patches", "patch_size": 8, "stride": 4, "grid": [7, 7]},
        "method_details": {"directions": ["down", "up", "right", "left"], "prediction_steps": 5},
        "backbone_args": {"norm": "ln"},
    },
    # the digits demo: the settings `selfsup train` has always used (not a published recipe)
    "simclr_digits": {
        "data": {"batch_size": 256, "epochs": 30},
        "optimizer": {"class": "LARS", "peak_lr": 0.3, "groups": [{"weight_decay": 1e-6, "lars_eta": 0.001, "lars_clip_lr": False}, {}]},
        "schedule": {"warmup_epochs": 3},
        "method_details": {"temperature": 0.5, "projector": {"dims": [128, 2048, 128], "batch_norms": 1, "last_bn": None}},
        "backbone": "tiny",
    },
    # google-research/simclr README ImageNet command, run.py flags, model_util.projection_head
    "simclr_imagenet": {
        "data": {"batch_size": 4096, "epochs": 100},
        "optimizer": {"class": "LARS", "peak_lr": 0.3 * 16, "groups": [
            {"weight_decay": 1e-6, "lars_adapted": True, "lars_eta": 0.001, "lars_clip_lr": False, "lars_trust": "update_norm"},
            {"weight_decay": 0.0, "lars_adapted": False}]},
        "schedule": {"warmup_epochs": 10, "lr": {"start": 0.0, "end_of_warmup": 4.8, "end": 0.0}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 224, "crop_scale": [0.08, 1.0], **STRONG, "blur_p": 0.5}]},
        "method_details": {"temperature": 0.1, "projector": {"dims": [2048, 2048, 128], "batch_norms": 2, "last_bn": "scale"}},
    },
    # deepmind-research byol/configs/byol.py, 1,000-epoch preset
    "byol_imagenet": {
        "data": {"batch_size": 4096, "epochs": 1000},
        "optimizer": {"class": "LARS", "peak_lr": 0.2 * 16, "groups": [
            {"weight_decay": 1.5e-6, "lars_adapted": True, "lars_eta": 0.001, "lars_trust": "update_norm"}, {"weight_decay": 0.0}]},
        "schedule": {"warmup_epochs": 10, "lr": {"end": 0.0}},
        "views": {"name": "byol", "views": [
            {"size": 224, "blur_p": 1.0, "solarize_p": 0.0, **BYOL_JITTER}, {"size": 224, "blur_p": 0.1, "solarize_p": 0.2}]},
        "method_details": {"tau_base": 0.996, "projector": {"dims": [2048, 4096, 256]}, "predictor": {"dims": [256, 4096, 256]}},
        "ema_momentum": {"start": 0.996, "end": 1.0},
    },
    # facebookresearch/moco main_moco.py defaults
    "moco_v1_imagenet": {
        "data": {"batch_size": 256, "epochs": 200},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {"lr_schedule": "step", "milestone_steps": [120 * 5004, 160 * 5004], "lr": {"start": 0.03, "end": 0.0003}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 224, "crop_scale": [0.2, 1.0], "jitter_p": 1.0, "brightness": 0.4,
                                                "contrast": 0.4, "saturation": 0.4, "hue": 0.4, "grayscale_p": 0.2,
                                                "grayscale_first": True, "blur_p": 0.0}]},
        "method_details": {"temperature": 0.07, "queue_size": 65536, "embed_dim": 128, "head": {"dims": [2048, 128]}},
        "ema_momentum": {"start": 0.999, "end": 0.999},
    },
    # facebookresearch/moco: --mlp --moco-t 0.2 --aug-plus --cos
    "moco_v2_imagenet": {
        "data": {"batch_size": 256, "epochs": 200},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {"lr_schedule": "cosine", "warmup_steps": 0, "lr": {"start": 0.03, "end": 0.0}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 224, "crop_scale": [0.2, 1.0], "jitter_p": 0.8, **WEAK,
                                                "grayscale_p": 0.2, "blur_p": 0.5}]},
        "method_details": {"temperature": 0.2, "queue_size": 65536, "head": {"dims": [2048, 2048, 128], "batch_norms": 0}},
        "ema_momentum": {"start": 0.999, "end": 0.999},
    },
    # facebookresearch/moco-v3 CONFIG.md ResNet-50 100 epochs, main_moco.py defaults, moco/optimizer.py
    "moco_v3_imagenet": {
        "data": {"batch_size": 4096, "epochs": 100},
        "optimizer": {"class": "LARS", "peak_lr": 0.6 * 16, "groups": [
            {"weight_decay": 1e-6, "lars_adapted": True, "lars_eta": 0.001, "lars_trust": "update_norm"}, {"lars_adapted": False}]},
        "schedule": {"warmup_epochs": 10, "lr": {"start": 0.0, "end_of_warmup": 9.6}},
        "views": {"name": "byol", "views": [{"size": 224, "crop_scale": [0.2, 1.0], "blur_p": 1.0}, {"size": 224, "crop_scale": [0.2, 1.0], "blur_p": 0.1, "solarize_p": 0.2}]},
        "method_details": {"temperature": 1.0, "projector": {"dims": [2048, 4096, 256], "last_bn": "plain"},
                           "predictor": {"dims": [256, 4096, 256], "last_bn": None}},
        "ema_momentum": {"start": 0.99, "end": 1.0},
    },
    # moco-v3 CONFIG.md ViT-Small (4-node, batch 4096)
    "moco_v3_vit_small_imagenet": {
        "data": {"batch_size": 4096, "epochs": 300},
        "optimizer": {"class": "AdamW", "peak_lr": 1.5e-4 * 16, "groups": [{"weight_decay": 0.1}]},  # AdamW over every parameter
        "schedule": {"warmup_epochs": 40, "warmup_steps": 40 * 312},
        "views": {"name": "byol", "views": [{"size": 224, "crop_scale": [0.08, 1.0]}, {"size": 224, "crop_scale": [0.08, 1.0]}]},
        "method_details": {"temperature": 0.2, "frozen_patch_embed": True, "projector": {"dims": [384, 4096, 4096, 256]},
                           "predictor": {"last_bn": "plain"}},
        "backbone_args": {"patch_size": 16},
    },
    # facebookresearch/simsiam README and main_simsiam.py
    "simsiam_imagenet": {
        "data": {"batch_size": 512, "epochs": 100},
        "optimizer": {"class": "SGD", "peak_lr": 0.1, "groups": [{"weight_decay": 1e-4}, {"lr_scheduled": False, "lr": 0.1}]},
        "schedule": {"warmup_steps": 0, "lr": {"start": 0.1, "end": 0.0}},
        "views": {"name": "simclr", "views": [{"count": 2, "size": 224, "crop_scale": [0.2, 1.0], **WEAK, "blur_p": 0.5}]},
        "method_details": {"projector": {"dims": [2048, 2048, 2048, 2048], "last_bn": "plain"}, "predictor": {"dims": [2048, 512, 2048]}},
    },
    # facebookresearch/swav scripts/swav_200ep_bs256_pretrain.sh
    "swav_imagenet": {
        "data": {"batch_size": 256, "epochs": 200},
        "optimizer": {"class": "LARS", "peak_lr": 0.6, "groups": [
            {"weight_decay": 1e-6, "lars_adapted": True, "lars_eta": 0.001, "lars_clip_lr": False, "lars_trust": "larc"}]},
        "schedule": {"warmup_steps": 0, "lr": {"start": 0.6, "end": 0.0006}},
        "views": {"name": "multicrop", "views": [
            {"count": 2, "size": 224, "crop_scale": [0.14, 1.0], **STRONG, "blur_p": 0.5},
            {"count": 6, "size": 96, "crop_scale": [0.05, 0.14], **STRONG, "blur_p": 0.5}]},
        "method_details": {"temperature": 0.1, "num_prototypes": 3000, "epsilon": 0.05, "queue_length": 3840, "queue_start_epoch": 15,
                           "projector": {"dims": [2048, 2048, 128]}},
    },
    # facebookresearch/dino README "Boosting DINO performance" (ViT-S/16, 300 epochs), main_dino.py defaults
    "dino_imagenet": {
        "data": {"batch_size": 1024, "epochs": 300},
        "optimizer": {"class": "AdamW", "peak_lr": 5e-4 * 4, "groups": [{"weight_decay": 0.04}, {"weight_decay": 0.0}]},
        "schedule": {"warmup_epochs": 10, "lr": {"start": 0.0, "end_of_warmup": 2e-3, "end": 1e-6},
                     "weight_decay": {"start": 0.04, "end": 0.4}},
        "views": {"name": "dino", "views": [
            {"count": 1, "size": 224, "crop_scale": [0.4, 1.0], "blur_p": 1.0, "solarize_p": 0.0},
            {"count": 1, "size": 224, "crop_scale": [0.4, 1.0], "blur_p": 0.1, "solarize_p": 0.2},
            {"count": 8, "size": 96, "crop_scale": [0.05, 0.4], "blur_p": 0.5}]},
        "method_details": {"out_dim": 65536, "norm_last_layer": False, "teacher_temperature": {"start": 0.04, "final": 0.07, "warmup_epochs": 30},
                           "clip_grad": 3.0, "student_max_drop_path": 0.1, "teacher_max_drop_path": 0.0},
        "ema_momentum": {"start": 0.996, "end": 1.0},
    },
    # facebookresearch/dino README ResNet-50 command
    "dino_resnet50_imagenet": {
        "data": {"batch_size": 512, "epochs": 100},
        "optimizer": {"class": "SGD", "peak_lr": 0.06, "groups": [{"weight_decay": 1e-4}, {"weight_decay": 0.0}]},
        "schedule": {"warmup_epochs": 10, "lr": {"end": 1e-6}, "weight_decay": {"constant": 1e-4}},
        "views": {"name": "dino", "views": [
            {"size": 224, "crop_scale": [0.14, 1.0]}, {"size": 224, "crop_scale": [0.14, 1.0]},
            {"count": 8, "size": 96, "crop_scale": [0.05, 0.14]}]},
        "method_details": {"out_dim": 65536, "teacher_temperature": {"start": 0.04, "final": 0.04}},
        "ema_momentum": {"start": 0.996, "end": 1.0},
    },
    # zhirongw/lemniscate.pytorch README ImageNet command, main.py
    "instdisc_imagenet": {
        "data": {"batch_size": 256, "epochs": 200},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {"lr_schedule": "step", "milestone_steps": [120 * 5004, 160 * 5004]},
        "views": {"name": "simclr", "views": [{"count": 1, "size": 224, "crop_scale": [0.2, 1.0], "jitter_p": 1.0, "hue": 0.4,
                                                "grayscale_first": True, "flip_p": 0.5}]},
        "method_details": {"loss": "nce", "num_noise": 4096, "temperature": 0.07, "bank": [IMAGENET_TRAIN_SAMPLES, 128]},
        "backbone": "resnet18",
    },
    # HobbitLong/CMC README ResNet-50 command, train_CMC.py (0f2b643)
    "cmc_imagenet": {
        "data": {"batch_size": 128, "epochs": 400},
        "optimizer": {"class": "SGD", "peak_lr": 0.03, "groups": [{"weight_decay": 1e-4}]},
        "schedule": {"lr_schedule": "step", "milestone_steps": [250 * 10009, 300 * 10009, 350 * 10009]},
        "views": {"name": "cmc_lab", "views": [{"size": 224, "crop_scale": [0.08, 1.0]}]},
        "method_details": {"num_negatives": 4096, "temperature": 0.07, "width": 0.5},
    },
}
EXPECTED["simclr_cifar100"] = EXPECTED["simclr_cifar10"]  # the same solo-learn file ("change here for cifar100")


def describe(name: str) -> dict[str, Any]:
    config = build_config(name, {"data_dir": None})
    samples, side = IMAGENET if "imagenet" in name else CIFAR
    if name.endswith("digits"):
        samples = 1_437
    return build(config, samples, side).describe()


def check(expected: Any, actual: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected a mapping, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}.{key} missing from {sorted(actual)}"
            check(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list) and expected and isinstance(expected[0], dict):
        assert isinstance(actual, list) and len(actual) == len(expected), f"{where}: {len(expected)} entries expected, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            check(e, a, f"{where}[{i}]")
    elif isinstance(expected, float):
        # The last step of a cosine sits a hair above its end value (1e-8 of the peak at 31,200 steps).
        assert actual == pytest.approx(expected, rel=1e-6, abs=1e-7), f"{where}: expected {expected}, got {actual}"
    elif isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected), f"{where}: expected {expected}, got {actual}"
        for i, (e, a) in enumerate(zip(expected, actual)):
            check(e, a, f"{where}[{i}]")
    else:
        assert actual == expected, f"{where}: expected {expected!r}, got {actual!r}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_bundled_config_builds_its_published_recipe(name: str) -> None:
    check(EXPECTED[name], describe(name), name)


def test_every_bundled_config_is_checked_and_every_method_has_a_cifar10_recipe() -> None:
    bundled = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
    assert bundled == sorted(EXPECTED)
    assert {f"{m}_cifar10" for m in available()} <= set(bundled)


@pytest.mark.parametrize("path", sorted(CONFIG_DIR.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_value_of_a_bundled_config_names_its_source(path: Path) -> None:
    """Each ``key: value`` line carries a comment (the source, or "(ours)"), and the first line
    names the recipe (``selfsup train`` prints it)."""
    lines = path.read_text().splitlines()
    assert lines[0].startswith("# recipe: ")
    bare = [
        line for line in lines
        if line.strip() and not line.lstrip().startswith("#") and not line.rstrip().endswith(":") and "#" not in line
    ]
    assert not bare, f"{path.name}: values without a source: {bare}"


def test_run_without_config_on_cifar_takes_the_methods_bundled_recipe() -> None:
    config, line = build_run_config(None, {"method": "byol", "data": "cifar10"}, ["epochs=200"])
    assert line.startswith("recipe: solo-learn's BYOL on CIFAR-10") and "byol_cifar10.yaml" in line
    assert (config.lr, config.weight_decay, config.lars_eta, config.epochs) == (1.0, 1e-5, 0.02, 200)
    config, _ = build_run_config(None, {"method": "swav", "data": "cifar100"}, [])
    assert config.data == "cifar100" and config.method_args["queue_start_epoch"] == 50  # the CIFAR-10 recipe
    _, line = build_run_config(None, {"method": "byol", "data": "/some/folder"}, [])
    assert "byol's defaults" in line
    config, line = build_run_config(None, {}, [])  # `selfsup train`: the digits demo
    assert "demo" in line and config.backbone == "tiny" and config.epochs == 30
    # Another backbone keeps the recipe's optimizer and views, not its ResNet's arguments (the tiny
    # convnet refuses zero_init_residual); the recipe's own backbone keeps them.
    config, line = build_run_config(None, {"method": "simclr", "data": "cifar10", "backbone": "tiny"}, ["backbone.width=8"])
    assert config.backbone_args == {"width": 8} and "not applied to tiny" in line and config.optimizer == "lars"
    config, line = build_run_config(None, {"method": "dino", "data": "cifar10"}, [])
    assert config.backbone_args.get("zero_init_residual") is False and "not applied" not in line


def test_byol_preset_follows_the_epochs_of_an_override() -> None:
    """byol/configs/byol.py's presets, picked by the epochs given on top of the ImageNet config."""
    for epochs, (lr, wd, tau) in {100: (0.45, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.2, 1.5e-6, 0.996)}.items():
        config = build_config("byol_imagenet", {"epochs": epochs}).resolve()
        assert (config.lr, config.weight_decay, config.method_args["tau_base"]) == (lr, wd, tau), epochs


def test_moco_v3_setup_follows_the_epochs_of_an_override() -> None:
    """CONFIG.md's ResNet-50 setups: 100 epochs lr .6; 300 lr .3; 1000 lr .3, wd 1.5e-6, m .996."""
    for epochs, (lr, wd, m) in {100: (0.6, 1e-6, 0.99), 300: (0.3, 1e-6, 0.99), 1000: (0.3, 1.5e-6, 0.996)}.items():
        config = build_config("moco_v3_imagenet", {"epochs": epochs}).resolve()
        assert (config.lr, config.weight_decay, config.method_args["ema_momentum"]) == (lr, wd, m), epochs


def test_dry_run_json_prints_the_built_values(capsys) -> None:
    assert cli(["train", "--config", "swav_imagenet", "--dry-run", "--json", "--assume-samples", str(IMAGENET_TRAIN_SAMPLES)]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["recipe"].startswith("recipe: SwAV's official batch-256 script")
    assert out["data"]["steps_per_epoch"] == IMAGENET_TRAIN_SAMPLES // 256 and out["data"]["train_samples_assumed"]
    assert out["optimizer"]["groups"][0]["lars_trust"] == "larc"
    assert out["schedule"]["lr"]["end"] == pytest.approx(0.0006)  # --final_lr 0.0006
    assert [v["size"] for v in out["views"]["views"]] == [224, 96]


def test_dry_run_reads_the_training_set_size_when_the_data_is_here(capsys, data_dir) -> None:
    assert cli(["train", "--method", "simclr", "--data", "cifar10", "--data-dir", str(data_dir), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert "recipe: solo-learn's SimCLR on CIFAR-10" in text and "50,000 training images of 32 px" in text
    assert "LARS adapted (eta 0.02, clip_lr True, larc)" in text


def test_dry_run_without_data_names_the_assumption_to_make(capsys) -> None:
    assert cli(["train", "--config", "dino_imagenet", "--dry-run"]) == 2
    assert "--assume-samples" in capsys.readouterr().err
    assert cli(["train", "--config", "dino_imagenet", "--json"]) == 2
    assert "add --dry-run" in capsys.readouterr().err
