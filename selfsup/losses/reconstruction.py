"""Masked image modelling: MAE's mean squared error on the masked patches (He et al. 2021,
arXiv 2111.06377)."""

from __future__ import annotations

import torch

__all__ = ["mae_loss"]


def mae_loss(
    prediction: torch.Tensor, patches: torch.Tensor, mask: torch.Tensor, normalize_target: bool = True, eps: float = 1e-6
) -> torch.Tensor:
    """MAE's reconstruction loss (arXiv 2111.06377, section 3, "Reconstruction target").

    ``prediction`` and ``patches`` are ``(N, L, P)``: the decoder's output and the image's pixels,
    one row of ``P = p * p * C`` values per patch (:func:`selfsup.nn.patchify`); ``mask`` ``(N, L)``
    is 1 on the patches the encoder did not see. With ``normalize_target`` each target patch is
    normalized by the mean and standard deviation of its own pixels (the paper's "normalized
    pixels", the official ``--norm_pix_loss``: unbiased variance, ``eps`` 1e-6 added to it)::

        t = (x - mean(x)) / sqrt(var(x) + eps)          per patch
        L = sum_{n, l} mask_nl * mean_p (prediction_nlp - t_nlp)^2 / sum_{n, l} mask_nl

    the mean squared error over the masked patches only, as the official ``forward_loss``
    (facebookresearch/mae, models_mae.py). float32 whatever the input dtype.
    """
    if prediction.shape != patches.shape or prediction.dim() != 3 or mask.shape != prediction.shape[:2]:
        raise ValueError(
            f"mae_loss takes prediction and patches (N, L, P) and mask (N, L); got {tuple(prediction.shape)}, "
            f"{tuple(patches.shape)} and {tuple(mask.shape)}"
        )
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        target = patches.float()
        if normalize_target:
            target = (target - target.mean(dim=-1, keepdim=True)) / torch.sqrt(target.var(dim=-1, keepdim=True) + eps)
        per_patch = (prediction.float() - target).pow(2).mean(dim=-1)
        mask = mask.float()
        return (per_patch * mask).sum() / mask.sum().clamp_min(1.0)
