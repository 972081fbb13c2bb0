"""Losses without negatives that regress one view's prediction onto the other view's target:
BYOL's normalized mean squared error and SimSiam's negative cosine similarity.

Gradients are stopped explicitly: each function says which of its inputs it detaches, so a
method's ablation (SimSiam without stop-gradient) is a visible argument, not a hidden flag.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["byol_loss", "negative_cosine", "normalized_mse", "normalized_output_std", "simsiam_loss"]


def _unit_f32(x: torch.Tensor) -> torch.Tensor:
    # float32 even from a bf16 autocast region: the norms of 2,048-d vectors lose digits in bf16.
    return F.normalize(x.float(), dim=-1)


def normalized_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BYOL's regression loss (Grill et al. 2020, arXiv 2006.07733, eq. 2), averaged over the batch::

        L(q, z') = || q / |q| - z' / |z'| ||^2 = 2 - 2 <q, z'> / (|q| |z'|)

    No gradient is stopped here; BYOL's target ``z'`` comes from a network that has none
    (:func:`byol_loss` detaches it explicitly).
    """
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        diff = _unit_f32(prediction) - _unit_f32(target)
        return diff.pow(2).sum(dim=-1).mean()


def byol_loss(
    prediction1: torch.Tensor, prediction2: torch.Tensor, target1: torch.Tensor, target2: torch.Tensor
) -> torch.Tensor:
    """BYOL's symmetrized loss ``L + L~`` (arXiv 2006.07733, section 3.1): the online prediction of
    each view regressed onto the target projection of the other view, with the gradient stopped at
    the targets (``sg(z')``: BYOL minimizes over the online parameters only)::

        L_total = mean_i [ ||q1_i^ - sg(z'2_i)^||^2 + ||q2_i^ - sg(z'1_i)^||^2 ]

    It is the sum of the two directions, as in the paper and the official code (range [0, 8]).
    """
    return normalized_mse(prediction1, target2.detach()) + normalized_mse(prediction2, target1.detach())


def negative_cosine(prediction: torch.Tensor, target: torch.Tensor, stop_gradient: bool = True) -> torch.Tensor:
    """SimSiam's ``D(p, z) = - p / |p| . z / |z|`` averaged over the batch (Chen & He 2020,
    arXiv 2011.10566, eq. 1; Algorithm 1: ``-(p * z.detach()).sum(dim=1).mean()`` on unit vectors).

    With ``stop_gradient`` (the paper's method, eq. 3) ``z`` is treated as a constant; without it
    the gradient also flows into ``z`` (the collapsing ablation of section 4.1, Figure 2).
    """
    if stop_gradient:
        target = target.detach()
    with torch.autocast(device_type=prediction.device.type, enabled=False):
        return -(_unit_f32(prediction) * _unit_f32(target)).sum(dim=-1).mean()


def simsiam_loss(
    prediction1: torch.Tensor,
    prediction2: torch.Tensor,
    target1: torch.Tensor,
    target2: torch.Tensor,
    stop_gradient: bool = True,
    symmetric: bool = True,
) -> torch.Tensor:
    """SimSiam's loss (arXiv 2011.10566, eq. 4): ``L = D(p1, sg(z2)) / 2 + D(p2, sg(z1)) / 2``.

    ``symmetric=False`` gives the paper's asymmetric variant ``D(p1, sg(z2))`` (Table 5).
    The minimum is -1 in both forms.
    """
    loss = negative_cosine(prediction1, target2, stop_gradient)
    return 0.5 * loss + 0.5 * negative_cosine(prediction2, target1, stop_gradient) if symmetric else loss


@torch.no_grad()
def normalized_output_std(z: torch.Tensor) -> torch.Tensor:
    """The collapse monitor of SimSiam's Figure 2: the standard deviation over the batch of each
    channel of ``z / |z|``, averaged over channels. A collapsed output (every sample the same
    direction) gives 0; outputs spread like a zero-mean isotropic Gaussian give about ``1/sqrt(d)``.
    """
    unit = _unit_f32(z)
    return unit.std(dim=0).mean()
