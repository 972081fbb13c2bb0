"""InstDisc — Wu, Xiong, Yu, Lin 2018, "Unsupervised Feature Learning via Non-Parametric Instance
Discrimination" (arXiv 1805.01978); official code: zhirongw/lemniscate.pytorch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..losses import held_nce, nonparametric_softmax, proximal_term
from ..nn import gather
from ..nn.memory import MemoryBank
from .base import Method, MethodConfig, RecipeChoice
from .registry import register

# Rows of the memory bank until the engine tells the method the dataset size (bind_dataset):
# enough to run the method on its own, e.g. in tests, on sample indices below it.
UNBOUND_BANK_SIZE = 1024


@dataclass
class InstDiscConfig(MethodConfig):
    """InstDisc's hyper-parameters (paper and official code, lemniscate.pytorch)."""

    embedding_dim: int = 128  # the L2-normalized feature per image (section 3.1: 128-d)
    loss: Literal["nce", "softmax"] = "nce"  # NCE with noise samples (ImageNet) or the exact softmax over the bank
    temperature: float = 0.07  # tau: 0.07 on ImageNet; the official CIFAR-10 run uses 0.1 with the exact softmax
    num_noise: int = 4096  # m, noise samples per image for NCE (section 3.2; Table 1's best setting)
    bank_momentum: float = 0.5  # memory-bank update v <- normalize(0.5 v + 0.5 f) (official --nce-m 0.5)
    # lambda of the proximal term (section 3.3); 0 turns it off. The official code implements no
    # proximal term, and the paper's value could not be checked here (see the class docstring).
    proximal_weight: float = 0.0

    def validate_fields(self) -> None:
        if self.loss not in ("nce", "softmax"):
            raise ConfigError(f"instdisc loss must be 'nce' or 'softmax', got '{self.loss}'.")
        if self.num_noise < 1 or self.embedding_dim < 1:
            raise ConfigError("instdisc num_noise and embedding_dim must be >= 1.")
        if not 0.0 <= self.bank_momentum < 1.0:
            raise ConfigError(f"instdisc bank_momentum must be in [0, 1), got {self.bank_momentum}.")
        if self.proximal_weight < 0:
            raise ConfigError(f"instdisc proximal_weight must be >= 0, got {self.proximal_weight}.")


@register
class InstDisc(Method):
    """Every image is its own class: a non-parametric softmax over a memory bank of 128-d features.

    The backbone feeds a linear layer and L2 normalization (``f``, 128-d). Each training image i
    has an entry ``v_i`` in a memory bank (N x 128, random unit vectors at first). The loss is
    NCE against ``num_noise`` entries drawn uniformly from the bank, with the normalization
    constant Z estimated on the first batch and then held fixed (eqs. 4-7; official
    ``NCEAverage``), or the exact softmax over all N entries (eqs. 2-3, ``loss: softmax``; the
    official CIFAR-10 setting ``--nce-k 0 --nce-t 0.1``). After each optimizer step the entries of
    the batch become ``normalize(0.5 v_i + 0.5 f_i)``. Optionally the proximal term
    ``lambda ||f_i - v_i||^2`` of section 3.3.

    Across processes (issue 7): every rank draws the noise of the whole global batch from the
    same generator state and keeps its rows, Z is estimated from the global batch (all-reduced),
    and the bank update gathers indices and features from all ranks, so each rank's bank and the
    loss over the global batch equal those of one process.

    Published CIFAR-10 figure (ResNet-18, weighted kNN): the paper's Table 1 could not be read
    from the sources available offline; a third-party reproduction (lemniscate_paddle README)
    cites 80.4% top-1 for NCE with m = 4,096 as the paper's number. Nor could lambda of
    section 3.3 be read, so the proximal term is off by default (as in the official code).
    """

    name = "instdisc"
    description = "instance discrimination: memory bank of 128-d features, NCE or exact non-parametric softmax (Wu et al. 2018)"
    paper = "arXiv 1805.01978"
    Config = InstDiscConfig
    needs_index = True
    # Official main.py (ImageNet): SGD, lr 0.03 whatever the batch (not scaled; batch 256),
    # momentum 0.9, weight decay 1e-4, no warmup, lr x0.1 at epochs 120 and 160 of 200 (scaled
    # with the run's epochs by defaults_for). Its CIFAR-10 script: configs/instdisc_cifar10.yaml.
    optim_defaults = {"optimizer": "sgd", "lr": 0.03, "weight_decay": 1e-4, "lr_scaling": "none", "warmup_epochs": 0.0}
    lr_steps = (200, 120, 160)
    # Official main.py: RandomResizedCrop(scale 0.2-1), RandomGrayscale(0.2) and then
    # ColorJitter(0.4, 0.4, 0.4, 0.4) always applied, horizontal flip; one view per image.
    recipe = RecipeChoice(
        "simclr",
        dict(count=1, crop_scale=(0.2, 1.0), jitter_p=1.0, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.4,
             grayscale_p=0.2, grayscale_first=True, blur_p=0.0),
    )

    def __init__(self, backbone, config: InstDiscConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        self.head = nn.Linear(backbone.feature_dim, config.embedding_dim)
        self.memory = MemoryBank(UNBOUND_BANK_SIZE, config.embedding_dim, config.bank_momentum, resize_on_load=True)
        # Z of eq. 7; -1 until estimated from the first batch (a buffer: checkpointed with the model).
        self.register_buffer("nce_normalizer", torch.tensor(-1.0))
        self._bound = False
        self._pending: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None

    def bind_dataset(self, num_samples: int) -> None:
        if num_samples != self.memory.size or not self._bound:
            self.memory.resize(num_samples)
        self._bound = True

    def describe(self) -> dict[str, Any]:
        c = self.config
        return {
            "loss": c.loss, "temperature": c.temperature, "num_noise": c.num_noise if c.loss == "nce" else None,
            "bank": list(self.memory.bank.shape), "bank_momentum": c.bank_momentum, "embedding_dim": c.embedding_dim,
            "proximal_weight": c.proximal_weight,
        }

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """The L2-normalized 128-d feature ``f`` of images (float32)."""
        return F.normalize(self.head(self.backbone(images)).float(), dim=1)

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        if index is None:
            raise ConfigError("instdisc needs the sample index of every image (needs_index).")
        config, memory = self.config, self.memory
        if not self._bound and int(index.max()) >= memory.size:
            raise ConfigError(
                f"sample index {int(index.max())} is beyond the memory bank ({memory.size} entries); "
                "call bind_dataset(num_samples) first (the engine does)."
            )
        features = self.embed(views[0])
        out: dict[str, torch.Tensor] = {}
        normalizer = self.nce_normalizer
        if config.loss == "softmax":
            loss = nonparametric_softmax(features, memory.bank, index, config.temperature)
        else:
            noise_index = memory.sample_local(features.shape[0], config.num_noise)
            positive = memory.similarity(features, index[:, None])[:, 0]  # v_i^(t-1) . f_i
            noise = memory.similarity(features, noise_index)  # (B, m)
            loss, normalizer = held_nce(positive, noise, config.temperature, self.nce_normalizer, memory.size)
            out["nce_normalizer"] = normalizer.detach()
        if config.proximal_weight > 0:
            prox = proximal_term(features, memory.bank[index], config.proximal_weight)
            out["proximal"] = prox.detach()
            loss = loss + prox
        # The bank and Z change only after the optimizer step (after_optimizer_step).
        self._pending = (index.detach(), features.detach(), normalizer.detach())
        out["loss"] = loss
        return out

    @torch.no_grad()
    def after_optimizer_step(self, progress) -> None:  # noqa: ANN001
        pending, self._pending = self._pending, None
        if pending is None:
            return
        index, features, normalizer = pending
        self.memory.update(gather(index), gather(features))
        if self.config.loss == "nce":
            self.nce_normalizer.copy_(normalizer)  # the first estimate, then the same value again
