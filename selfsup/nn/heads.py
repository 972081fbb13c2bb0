"""Heads shared by the methods: projection and prediction MLPs."""

from __future__ import annotations

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
        self.out_dim = out_dim
