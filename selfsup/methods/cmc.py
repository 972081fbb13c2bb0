"""CMC — Tian, Krishnan, Isola 2019, "Contrastive Multiview Coding" (arXiv 1906.05849);
official code: HobbitLong/CMC."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import ops
from ..augment.recipes import normalized_lab
from ..errors import ConfigError
from ..losses import cross_view_softmax, held_nce, memory_softmax, multiview_objective
from ..nn import Backbone, gather, gather_with_grad, get_rank
from ..nn.memory import MemoryBank
from ..nn.multiview import MultiViewEncoder, view_encoder
from .base import Method, MethodConfig, RecipeChoice
from .registry import register

# Rows of each memory bank until the engine tells the method the dataset size (bind_dataset).
UNBOUND_BANK_SIZE = 1024


@dataclass
class CMCConfig(MethodConfig):
    """CMC's hyper-parameters (paper and official code, HobbitLong/CMC)."""

    embedding_dim: int = 128  # each encoder ends in a linear layer to 128-d and L2 normalization (official)
    # "nce": memory bank per view + NCE (the paper's); "softmax": the same sampled negatives with a
    # softmax cross-entropy (official --softmax, better per its README); "batch": the full softmax
    # over the other view's embeddings of the (global) batch, no bank.
    contrast: Literal["nce", "softmax", "batch"] = "nce"
    temperature: float = 0.07  # 0.07 on ImageNet (official README; 0.1 for STL-10)
    # Negatives drawn from the bank per anchor: --nce_k 4096 (train_CMC.py; the README: "Default:
    # 4096", and the released CMC weights were trained with 4,096).
    num_negatives: int = 4096
    bank_momentum: float = 0.5  # v <- normalize(0.5 v + 0.5 f) (official --nce_m 0.5)
    width: float = 0.5  # each encoder's width relative to the backbone's: "2xResNet50half" (official README)
    # Input channels of each view, in the recipe's order: L and ab; a paired modality adds a 1.
    view_channels: tuple[int, ...] = (1, 2)
    graph: Literal["core", "full"] = "full"  # pairs for > 2 views (section 3.3): with view 0, or all pairs

    def validate_fields(self) -> None:
        if self.contrast not in ("nce", "softmax", "batch"):
            raise ConfigError(f"cmc contrast must be 'nce', 'softmax' or 'batch', got '{self.contrast}'.")
        if self.graph not in ("core", "full"):
            raise ConfigError(f"cmc graph must be 'core' or 'full', got '{self.graph}'.")
        if len(self.view_channels) < 2 or min(self.view_channels) < 1:
            raise ConfigError(f"cmc view_channels needs >= 2 views of >= 1 channel, got {list(self.view_channels)}.")
        if self.width <= 0 or self.num_negatives < 1 or self.embedding_dim < 1:
            raise ConfigError("cmc width must be > 0, and num_negatives and embedding_dim >= 1.")
        if not 0.0 <= self.bank_momentum < 1.0:
            raise ConfigError(f"cmc bank_momentum must be in [0, 1), got {self.bank_momentum}.")


@register
class CMC(Method):
    """Views of one image, one encoder each, contrasted in both directions.

    By default the views are the L and ab channels of CIE Lab (recipe ``cmc_lab``), each encoded
    by its own network of half the backbone's width ("2xResNet50half", official README) followed
    by a linear layer and L2 normalization. Each direction (L -> ab and ab -> L) contrasts an
    anchor of one view with the other view: against its memory bank with NCE (``contrast: nce``;
    one bank per view, ``num_negatives`` uniform draws, Z per direction estimated on the first
    batch and then held, official ``NCEAverage``), with a softmax over the same draws
    (``softmax``), or with a softmax over the other view's embeddings of the global batch
    (``batch``, gathered with gradient across processes). With more than two views (paired
    modalities, e.g. depth) the loss sums the pairs of the core view or of the full graph
    (section 3.3). Probes use the concatenation of all encoders' features on Lab input.

    Across processes: bank noise drawn for the global batch (each rank keeps its rows), Z
    all-reduced, bank updates gathered from every rank, so one step equals one process's.
    """

    name = "cmc"
    description = "contrastive multiview coding: L and ab views, one encoder each, memory-bank NCE or softmax (Tian et al. 2019)"
    paper = "arXiv 1906.05849"
    Config = CMCConfig
    needs_index = True
    # Official train_CMC.py (HobbitLong/CMC, the version with ResNets): SGD, --learning_rate 0.03
    # whatever the batch (not scaled), momentum 0.9, --weight_decay 1e-4, no warmup, lr x0.1 at
    # --lr_decay_epochs 250,300,350 of --epochs 400 (scaled with the run's epochs by defaults_for).
    optim_defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "lr_scaling": "none", "warmup_epochs": 0.0}
    lr_steps = (400, 250, 300, 350)
    # train_CMC.py: RandomResizedCrop(scale=(--crop_low 0.08, 1)), flip, RGB -> Lab.
    recipe = RecipeChoice("cmc_lab", {"crop_scale": (0.08, 1.0)})

    def __init__(self, backbone, config: CMCConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        channels = tuple(config.view_channels)
        encoders = [view_encoder(backbone, c, config.width) for c in channels]
        self.backbone = Backbone(
            MultiViewEncoder(encoders, channels), sum(e.feature_dim for e in encoders), "cmc",
            {"encoder": backbone.arch, "view_channels": list(channels), "encoder_args": dict(encoders[0].build_args)},
        )
        self.heads = nn.ModuleList(nn.Linear(e.feature_dim, config.embedding_dim) for e in encoders)
        uses_bank = config.contrast != "batch"
        self.memories = nn.ModuleList(
            MemoryBank(UNBOUND_BANK_SIZE, config.embedding_dim, config.bank_momentum, resize_on_load=True)
            for _ in channels if uses_bank
        )
        # Z of each direction (anchor view i against the bank of view j); -1 until estimated.
        self.register_buffer("nce_normalizer", torch.full((len(channels), len(channels)), -1.0))
        self._bound = False
        self._pending: tuple[torch.Tensor, list[torch.Tensor], torch.Tensor] | None = None

    @property
    def encoders(self) -> nn.ModuleList:
        return self.backbone.body.encoders

    def bind_dataset(self, num_samples: int) -> None:
        for memory in self.memories:
            if num_samples != memory.size or not self._bound:
                memory.resize(num_samples)
        self._bound = True

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "contrast": c.contrast, "temperature": c.temperature, "num_negatives": c.num_negatives,
            "bank_momentum": c.bank_momentum, "embedding_dim": c.embedding_dim, "width": c.width,
            "view_channels": list(c.view_channels), "banks": [list(m.bank.shape) for m in self.memories],
        }

    def eval_transform(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, H, W, 3 + k)`` -> normalized Lab and the k paired modalities in [-1, 1], as
        the ``cmc_lab`` recipe makes them (without the random crop)."""
        x = ops.to_float(images)
        return torch.cat((normalized_lab(x[:, :3]), x[:, 3:] * 2 - 1), dim=1)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        config, channels = self.config, list(self.config.view_channels)
        if [v.shape[1] for v in views] != channels:
            raise ConfigError(
                f"CMC is set for views of {channels} channels but the recipe gave {[v.shape[1] for v in views]}; "
                "set method.view_channels (L=1, ab=2, one more 1 per paired modality)."
            )
        features = [F.normalize(head(encoder(view)).float(), dim=1) for encoder, head, view in zip(self.encoders, self.heads, views)]
        batch, rank = features[0].shape[0], get_rank()
        normalizers = self.nce_normalizer.clone()
        if config.contrast == "batch":
            gathered = [gather_with_grad(f) for f in features]

            def directional(i: int, j: int) -> torch.Tensor:
                return cross_view_softmax(features[i], gathered[j], config.temperature, rank * batch)
        else:
            if index is None:
                raise ConfigError("cmc with a memory bank needs the sample index of every image (needs_index).")
            size = self.memories[0].size
            if not self._bound and int(index.max()) >= size:
                raise ConfigError(f"sample index {int(index.max())} is beyond the memory banks ({size} entries); call bind_dataset first.")
            # One draw of negatives per step, shared by every direction (as the official code).
            noise_index = self.memories[0].sample_local(batch, config.num_negatives)

            def directional(i: int, j: int) -> torch.Tensor:
                memory = self.memories[j]
                positive = memory.similarity(features[i], index[:, None])[:, 0]
                negatives = memory.similarity(features[i], noise_index)
                if config.contrast == "softmax":
                    return memory_softmax(positive, negatives, config.temperature)
                loss, normalizers[i, j] = held_nce(positive, negatives, config.temperature, normalizers[i, j], size)
                return loss

        loss = multiview_objective(directional, len(channels), config.graph)
        # Banks and Z change only after the optimizer step (after_optimizer_step).
        self._pending = (index.detach() if index is not None else None, [f.detach() for f in features], normalizers)
        return {"loss": loss}

    @torch.no_grad()
    def after_optimizer_step(self, progress) -> None:  # noqa: ANN001
        pending, self._pending = self._pending, None
        if pending is None or not len(self.memories):
            return
        index, features, normalizers = pending
        all_index = gather(index)
        for memory, view_features in zip(self.memories, features):
            memory.update(all_index, gather(view_features))
        self.nce_normalizer.copy_(normalizers)
