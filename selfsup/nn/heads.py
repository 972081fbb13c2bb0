"""Heads shared by the methods: projection and prediction MLPs, and DINO's head."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class MLP(nn.Sequential):
    """Linear layers with BN and ReLU between them.

    ``num_layers`` counts linear layers. Hidden layers are Linear -> BN -> ReLU (Linear -> ReLU
    without ``batch_norm``); the last is Linear, followed by BN when ``last_bn`` (SimSiam's and
    MoCo v3's projectors: ``last_bn_affine=False``; SimCLR's official projector: scale but no
    shift, ``last_bn_bias=False``) — linears drop their bias when followed by BN, since BN
    removes it anyway.
    """

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        num_layers: int = 2,
        batch_norm: bool = True,
        last_bn: bool = False,
        last_bn_affine: bool = True,
        last_bn_bias: bool = True,
    ) -> None:
        if num_layers < 1:
            raise ValueError(f"an MLP needs at least one layer, got {num_layers}")
        layers: list[nn.Module] = []
        dim = in_dim
        for _ in range(num_layers - 1):
            layers += [nn.Linear(dim, hidden_dim, bias=not batch_norm)]
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_dim))
            layers.append(nn.ReLU(inplace=True))
            dim = hidden_dim
        layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
        if last_bn:
            bn = nn.BatchNorm1d(out_dim, affine=last_bn_affine)
            if last_bn_affine and not last_bn_bias:
                bn.register_parameter("bias", None)  # a scale (gamma) without a shift (beta)
            layers.append(bn)
        super().__init__(*layers)


class WeightNormLinear(nn.Module):
    """Linear layer without bias whose rows are ``g * v / |v|`` (Salimans & Kingma 2016,
    arXiv 1602.07868), computed in float32 even under autocast: its outputs are divided by
    temperatures as low as 0.04 before a softmax."""

    def __init__(self, in_dim: int, out_dim: int, learn_norm: bool) -> None:
        super().__init__()
        self.weight_v = nn.Parameter(nn.Linear(in_dim, out_dim, bias=False).weight.detach().clone())
        self.weight_g = nn.Parameter(torch.ones(out_dim, 1), requires_grad=learn_norm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.linear(x.float(), self.weight_g * F.normalize(self.weight_v, dim=1))


class DINOHead(nn.Module):
    """DINO's projection head (Caron et al. 2021, arXiv 2104.14294, section 3.1 and the official
    ``DINOHead``): MLP (GELU, hidden 2048) -> bottleneck 256 -> L2 normalization ->
    weight-normalized linear to K, its norm fixed to 1 with ``norm_last_layer``."""

    def __init__(
        self, in_dim: int, out_dim: int, hidden_dim: int, bottleneck_dim: int, num_layers: int, use_bn: bool,
        norm_last_layer: bool,
    ) -> None:
        super().__init__()
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list[nn.Module] = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers += [nn.BatchNorm1d(dims[i + 1])] if use_bn else []
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for module in self.mlp.modules():
            if isinstance(module, nn.Linear):  # official _init_weights: truncated normal, std 0.02
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.last_layer = WeightNormLinear(bottleneck_dim, out_dim, learn_norm=not norm_last_layer)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The L2-normalized bottleneck (float32) that the last layer maps to the K outputs."""
        x = self.mlp(x)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return F.normalize(x.float(), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.last_layer(self.embed(x))  # float32: the last layer runs outside autocast


def mlp_dims(module: nn.Module) -> dict[str, Any]:
    """A head's shape for descriptions: the widths of its linear layers and where its BNs are
    (``last_bn``: "affine", "scale" (no shift), "plain" or None)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    children = list(module.children())
    last = children[-1] if children else None
    last_bn = None
    if isinstance(last, nn.modules.batchnorm._BatchNorm):
        last_bn = "plain" if last.weight is None else ("scale" if last.bias is None else "affine")
    dims = [linears[0].in_features] + [m.out_features for m in linears] if linears else []
    return {"dims": dims, "batch_norms": len(norms), "last_bn": last_bn}
