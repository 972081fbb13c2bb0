"""View recipes: declared objects that turn a uint8 batch into the views a method trains on.

A recipe is a list of :class:`ViewSpec` (one per kind of view, with a count), each stating the
papers' parameters. Sizes default to the stored image size, so the same recipe serves 32 px CIFAR
and 224 px ImageNet; :func:`create_recipe` fills in the paper's choices for small images (e.g.
SimCLR's jitter strength 0.5 and no blur on CIFAR).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

import torch

from ..config import coerce, from_dict
from ..errors import ConfigError, closest
from . import ops

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SMALL_IMAGE = 64  # at or below this side, use the CIFAR variants of the recipes
_JITTER = ("brightness", "contrast", "saturation", "hue")  # torchvision's numbering of the jitter ``order``


@dataclass
class ViewSpec:
    """One kind of view: the SimCLR pipeline, in torchvision's order.

    crop -> horizontal flip -> colour jitter (random order per sample, with probability
    ``jitter_p``) -> grayscale -> Gaussian blur -> solarization -> normalization.
    ``grayscale_first`` swaps the two middle steps: grayscale, then jitter (InstDisc's and MoCo
    v1's ImageNet pipeline, ``RandomGrayscale`` before ``ColorJitter``).
    """

    size: int = 32  # output side in pixels
    count: int = 1  # how many views of this kind
    crop_scale: tuple[float, float] = (0.08, 1.0)  # area fraction of the crop (SimCLR, Inception)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)  # aspect ratio range of the crop
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4  # factor drawn from [1 - b, 1 + b]
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1  # shift drawn from [-h, h] turns
    grayscale_p: float = 0.2
    grayscale_first: bool = False  # grayscale before the colour jitter (InstDisc, MoCo v1)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    blur_kernel_fraction: float = 0.1  # kernel side as a fraction of ``size`` (SimCLR: 10%)
    solarize_p: float = 0.0
    solarize_threshold: float = 0.5
    normalize: bool = True
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    def validate(self) -> None:
        for name in ("flip_p", "jitter_p", "grayscale_p", "blur_p", "solarize_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"augmentation {name} must be a probability in [0, 1], got {value}.")
        if self.size < 1 or self.count < 0:
            raise ConfigError(f"augmentation size must be >= 1 and count >= 0, got {self.size} and {self.count}.")
        if not 0.0 < self.crop_scale[0] <= self.crop_scale[1] <= 1.0:
            raise ConfigError(f"crop_scale must satisfy 0 < min <= max <= 1, got {self.crop_scale}.")
        if not 0.0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ConfigError(f"crop_ratio must satisfy 0 < min <= max, got {self.crop_ratio}.")
        for name in _JITTER[:3]:
            if getattr(self, name) < 0:
                raise ConfigError(f"augmentation {name} must be >= 0, got {getattr(self, name)}.")
        if not 0.0 <= self.hue <= 0.5:
            raise ConfigError(f"augmentation hue must be in [0, 0.5], got {self.hue}.")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise ConfigError(f"blur_sigma must satisfy 0 < min <= max, got {self.blur_sigma}.")

    # -- parameters -------------------------------------------------------------------------
    def sample(self, batch: int, height: int, width: int, generator: torch.Generator | None, device: torch.device) -> dict[str, torch.Tensor]:
        """Draw every random parameter of this view for ``batch`` images."""

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return torch.empty(batch, device=device).uniform_(lo, hi, generator=generator)

        def coin(p: float) -> torch.Tensor:
            return torch.rand(batch, device=device, generator=generator) < p

        return {
            "box": ops.sample_crop_boxes(batch, height, width, self.crop_scale, self.crop_ratio, generator, device),
            "flip": coin(self.flip_p),
            "jitter": coin(self.jitter_p),
            **{n: uniform(max(0.0, 1 - getattr(self, n)), 1 + getattr(self, n)) for n in _JITTER[:3]},
            "hue": uniform(-self.hue, self.hue),
            # torchvision draws a fresh order of the four jitter operations for every call.
            "order": torch.rand(batch, 4, device=device, generator=generator).argsort(dim=1),
            "grayscale": coin(self.grayscale_p),
            "blur": coin(self.blur_p),
            "sigma": uniform(*self.blur_sigma),
            "solarize": coin(self.solarize_p),
        }

    # -- application ------------------------------------------------------------------------
    def apply(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply the view to float images ``(B, 3, H, W)`` in [0, 1] with drawn ``params``."""
        x = ops.resized_crop(x, params["box"], self.size, params["flip"])
        if not self.grayscale_first:
            x = self._jitter(x, params)
        if self.grayscale_p > 0:
            x = masked(params["grayscale"], lambda v: ops.rgb_to_grayscale(v).repeat(1, 3, 1, 1), x)
        if self.grayscale_first:
            x = self._jitter(x, params)
        if self.blur_p > 0:
            kernel = ops.gaussian_kernel_size(self.size, self.blur_kernel_fraction)
            x = masked(params["blur"], lambda v, s: ops.gaussian_blur(v, kernel, s), x, params["sigma"])
        if self.solarize_p > 0:
            x = masked(params["solarize"], lambda v: ops.solarize(v, self.solarize_threshold), x)
        if self.normalize:
            x = ops.normalize(x, self.mean, self.std)
        return x

    def _jitter(self, x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.jitter_p <= 0:
            return x
        steps = [(i, getattr(ops, f"adjust_{n}"), params[n]) for i, n in enumerate(_JITTER) if getattr(self, n) > 0]
        for slot in range(4):
            for op_index, fn, factor in steps:
                x = masked(params["jitter"] & (params["order"][:, slot] == op_index), fn, x, factor)
        return x


# Which branch :func:`masked` takes: None picks by device (row subsets on the CPU, torch.where
# elsewhere); True / False force row subsets / torch.where (the tests compare both on the CPU).
MASK_ROWS: bool | None = None


def masked(
    mask: torch.Tensor, fn: Callable[..., torch.Tensor], x: torch.Tensor, *per_sample: torch.Tensor
) -> torch.Tensor:
    """``fn(x, *per_sample)`` on the rows where ``mask`` is true, ``x`` elsewhere.

    On the CPU only the selected rows are computed (work proportional to them; the host sync for
    their count is free there). On an accelerator ``fn`` runs on the whole batch and
    ``torch.where`` selects, which avoids a device-to-host sync and keeps the stream asynchronous.
    Both give the same result (tested). ``x`` must be a tensor this module owns: it is updated in
    place on the CPU path.
    """
    rows_path = x.device.type == "cpu" if MASK_ROWS is None else MASK_ROWS
    if not rows_path:
        return torch.where(mask.view(-1, 1, 1, 1), fn(x, *per_sample), x)
    rows = mask.nonzero().flatten()
    if rows.numel() == 0:
        return x
    if rows.numel() == x.shape[0]:
        return fn(x, *per_sample)
    x.index_copy_(0, rows, fn(x.index_select(0, rows), *(p[rows] for p in per_sample)))
    return x


Shard = tuple[int, int]  # (rank, world size): this batch is part ``rank`` of ``world size`` equal parts


def sample_shard(
    spec: ViewSpec, batch: int, height: int, width: int, generator: torch.Generator | None,
    device: torch.device, shard: Shard = (0, 1),
) -> dict[str, torch.Tensor]:
    """``spec.sample`` for part ``rank`` of a global batch of ``world * batch`` images: the
    parameters of the whole global batch are drawn (every rank draws the same, from the same
    generator state) and this part's rows kept. A view is then the same whether the batch is
    augmented by one process or split over several, and the generator advances alike everywhere
    (checkpoints of rank 0 resume on any number of processes). The extra draws are a few numbers
    per image, nothing next to the image operations."""
    rank, world = shard
    params = spec.sample(batch * world, height, width, generator, device)
    return {key: value[rank * batch : (rank + 1) * batch] for key, value in params.items()}


@dataclass
class Recipe:
    """A named list of view kinds; calling it turns a uint8 batch into a list of views.

    ``shard=(rank, world)`` says the batch is the ``rank``-th of ``world`` equal slices of a global
    batch (distributed training): random parameters are drawn for the global batch and sliced
    (:func:`sample_shard`), so the views equal those one process makes of the global batch.
    """

    name: str
    views: list[ViewSpec]

    @property
    def num_views(self) -> int:
        return sum(spec.count for spec in self.views)

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)
    ) -> list[torch.Tensor]:
        """``images``: uint8 ``(B, H, W, 3)``. Returns float views ``(B, 3, size, size)``."""
        x = _to_float(images)
        return [spec.apply(x, params) for spec, params in self._draws(x, generator, shard)]

    def _draws(
        self, x: torch.Tensor, generator: torch.Generator | None, shard: Shard
    ) -> Iterator[tuple[ViewSpec, dict[str, torch.Tensor]]]:
        """``(spec, params)`` of every view in order, each drawn when the previous one is made."""
        batch, _, height, width = x.shape
        for spec in self.views:
            for _ in range(spec.count):
                yield spec, sample_shard(spec, batch, height, width, generator, x.device, shard)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "views": [dataclasses.asdict(v) for v in self.views]}


def _to_float(images: torch.Tensor, extra_channels: bool = False) -> torch.Tensor:
    """:func:`ops.to_float` of uint8 ``(B, H, W, 3)`` images (or ``(B, H, W, 3 + k)`` with
    ``extra_channels``) of at least 2x2 px; anything else is a ConfigError."""
    channels_ok = isinstance(images, torch.Tensor) and images.dim() == 4 and (
        images.shape[-1] >= 3 if extra_channels else images.shape[-1] == 3
    )
    if not channels_ok or images.dtype != torch.uint8:
        got = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        layout = "(B, H, W, 3 + k)" if extra_channels else "(B, H, W, 3)"
        raise ConfigError(f"a recipe takes uint8 images of shape {layout}; got {got}.")
    if images.shape[1] < 2 or images.shape[2] < 2:
        raise ConfigError(f"images of {images.shape[1]}x{images.shape[2]} px are too small to augment (need >= 2x2).")
    return ops.to_float(images)


# CMC's normalisation of Lab: L in [0, 100], a in about [-86.2, 98.2], b in about [-107.9, 94.5],
# each mapped to about [-1, 1] (the constants of the official code).
_LAB_MEAN = (50.0, (-86.183 + 98.233) / 2, (-107.857 + 94.478) / 2)
_LAB_HALF_RANGE = (50.0, (86.183 + 98.233) / 2, (107.857 + 94.478) / 2)


def normalized_lab(rgb: torch.Tensor) -> torch.Tensor:
    """Float RGB ``(B, 3, H, W)`` in [0, 1] -> CIE Lab with each channel mapped to about [-1, 1]
    (the normalization of CMC's official code)."""
    lab = ops.rgb_to_lab(rgb)
    mean = torch.tensor(_LAB_MEAN, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    half = torch.tensor(_LAB_HALF_RANGE, device=lab.device, dtype=lab.dtype).view(1, 3, 1, 1)
    return (lab - mean) / half


@dataclass
class LabRecipe(Recipe):
    """CMC's views of one crop: the L channel and the ab channels of CIE Lab
    (Tian et al. 2019, arXiv 1906.05849).

    Images may carry paired modalities as channels after RGB (uint8 ``(B, H, W, 3 + k)``, e.g. a
    depth map stored beside each image: ``load_folder(..., modalities=("depth",))``). They get the
    crop and flip of the colour channels and each becomes one more view, scaled to [-1, 1]:
    the views of a crop are ``[L, ab, modality_1, ..., modality_k]``.
    """

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)
    ) -> list[torch.Tensor]:
        x = _to_float(images, extra_channels=True)
        rgb, extra = x[:, :3], x[:, 3:]
        views: list[torch.Tensor] = []
        for spec, params in self._draws(x, generator, shard):
            lab = normalized_lab(spec.apply(rgb, params))
            views += [lab[:, :1].contiguous(), lab[:, 1:].contiguous()]
            if extra.shape[1]:
                paired = ops.resized_crop(extra, params["box"], spec.size, params["flip"]) * 2 - 1
                views += [channel.contiguous() for channel in paired.split(1, dim=1)]
        return views

    @property
    def num_views(self) -> int:
        """Views of RGB images (two per crop); each paired modality adds one per crop."""
        return 2 * super().num_views


@dataclass
class PatchRecipe(Recipe):
    """CPC's grid of overlapping patches, each augmented on its own (Hénaff et al. 2019,
    "Data-Efficient Image Recognition with Contrastive Predictive Coding", arXiv 1905.09272).

    One call, batched over every patch of every image:

    1. ``views[0]``, the whole image: a random crop and flip (not normalized);
    2. the grid: ``patch_size`` patches every ``stride`` pixels (:func:`patch_grid`);
    3. ``views[1]``, each patch on its own: a random crop inside the patch (spatial jitter), flip,
       colour jitter, grayscale, normalization; its ``size`` is the side the encoder receives
       (``patch_size`` unless the patches are upsampled for a backbone that needs larger inputs);
    4. colour dropping (:func:`drop_channels`) on a random ``channel_drop_p`` of the patches.

    Returns one view ``(B, grid_h, grid_w, 3, size, size)``.
    """

    patch_size: int = 8
    stride: int = 4
    channel_drop_p: float = 0.0  # colour dropping (Doersch et al. 2015): keep one channel per patch
    channel_drop_noise: float = 0.01  # dropped channels become noise of this fraction of the kept one's std

    @torch.no_grad()
    def __call__(
        self, images: torch.Tensor, generator: torch.Generator | None = None, shard: Shard = (0, 1)
    ) -> list[torch.Tensor]:
        whole, per_patch = self.views
        x = _to_float(images)
        batch, _, height, width = x.shape
        x = whole.apply(x, sample_shard(whole, batch, height, width, generator, x.device, shard))
        flat, (grid_h, grid_w) = patch_grid(x, self.patch_size, self.stride)
        n = flat.shape[0]  # patches in image-major order: the global batch's are in rank order too
        size = self.patch_size
        out = per_patch.apply(flat, sample_shard(per_patch, n, size, size, generator, flat.device, shard))
        if self.channel_drop_p > 0:
            out = drop_channels(out, self.channel_drop_p, self.channel_drop_noise, generator, shard)
        return [out.view(batch, grid_h, grid_w, 3, per_patch.size, per_patch.size)]

    @property
    def num_views(self) -> int:
        """One: the grid of patches (its two ``ViewSpec``s are steps of one view, not two views)."""
        return 1

    def describe(self) -> dict[str, Any]:
        extra = {"patch_size": self.patch_size, "stride": self.stride, "grid": list(self.grid_shape())}
        return {**super().describe(), **extra, "channel_drop_p": self.channel_drop_p}

    def grid_shape(self) -> tuple[int, int]:
        """``(grid_h, grid_w)``: the grid cut from the whole-image view (``views[0].size`` px)."""
        grid = (self.views[0].size - self.patch_size) // self.stride + 1
        return grid, grid


def cpc_geometry(image_size: int, patch_size: int | None = None, stride: int | None = None) -> tuple[int, int, int]:
    """``(patch_size, stride, grid side)`` of CPC's patch grid on ``image_size`` px images.

    Unset values follow the papers, scaled to the image: on large images CPC v2's geometry
    (80 px patches every 36 px of a 260 px crop: a 6x6 grid; arXiv 1905.09272, appendix A); on
    small images (<= 64 px) CPC v1's (a quarter of the side with 50% overlap: 64 px patches every
    32 px of 256 px, a 7x7 grid; arXiv 1807.03748, section 3.3), which on 32 px CIFAR gives 8 px
    patches every 4 px, the 7x7 grid Lightning Bolts' CIFAR-10 CPC v2 also uses. A 6x6 v2 grid
    scaled to 32 px would need 9.8 px patches every 4.4 px: it does not fit whole pixels.
    """
    small = image_size <= SMALL_IMAGE
    if patch_size is None:
        patch_size = max(4, image_size // 4) if small else round(image_size * 80 / 260)
    if stride is None:
        stride = max(1, patch_size // 2) if small else max(1, round(image_size * 36 / 260))
    if not 2 <= patch_size <= image_size:  # a 1 px patch has no spatial context (and no spread to colour-drop with)
        raise ConfigError(f"cpc patch_size must be between 2 and the image side ({image_size} px), got {patch_size}.")
    if stride < 1:
        raise ConfigError(f"cpc patch stride must be >= 1, got {stride}.")
    return patch_size, stride, (image_size - patch_size) // stride + 1


def patch_grid(x: torch.Tensor, patch_size: int, stride: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Float images ``(B, C, H, W)`` -> their patches ``(B * grid_h * grid_w, C, p, p)`` in row-major
    grid order (image, row, column), and ``(grid_h, grid_w)``. Patches start every ``stride`` px
    from the top-left corner; a remainder at the bottom/right edge is left out."""
    patches = x.unfold(2, patch_size, stride).unfold(3, patch_size, stride)  # (B, C, gh, gw, p, p)
    grid_h, grid_w = patches.shape[2], patches.shape[3]
    flat = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, x.shape[1], patch_size, patch_size)
    return flat.contiguous(), (grid_h, grid_w)


def drop_channels(
    x: torch.Tensor, p: float, noise: float, generator: torch.Generator | None = None, shard: Shard = (0, 1)
) -> torch.Tensor:
    """Colour dropping (Doersch et al. 2015, arXiv 1505.05192, section 3; CPC v2 section 4.1): in a
    random fraction ``p`` of the images ``(N, 3, h, w)``, keep one random channel and replace the
    other two with Gaussian noise of ``noise`` times the kept channel's standard deviation (on
    normalized inputs, i.e. around the mean colour), so that no colour is left to match on.

    The noise of each image comes from its own 63-bit seed (:func:`seeded_normal`), so that with
    ``shard`` (a slice of a global batch) each rank draws only per-image numbers for the global
    batch, never the global batch's dense noise."""
    rank, world = shard
    n = x.shape[0]
    rows = slice(rank * n, (rank + 1) * n)
    keep = torch.randint(0, 3, (n * world,), device=x.device, generator=generator)[rows].view(-1, 1, 1, 1)
    apply = (torch.rand(n * world, device=x.device, generator=generator) < p)[rows].view(-1, 1, 1, 1)
    seeds = torch.randint(0, 2**63 - 1, (n * world,), device=x.device, generator=generator)[rows]
    channel = torch.arange(x.shape[1], device=x.device).view(1, -1, 1, 1)

    def drop(v: torch.Tensor, keep: torch.Tensor, seeds: torch.Tensor) -> torch.Tensor:
        kept = v.gather(1, keep.expand(-1, 1, *v.shape[2:]))
        scale = noise * kept.flatten(1).std(dim=1).view(-1, 1, 1, 1)
        filler = seeded_normal(seeds, v.shape[1:]).to(v.dtype) * scale
        return torch.where(channel != keep, filler, v)

    # Noise only for the dropped images on the CPU (``masked``): hashing costs more than drawing.
    return masked(apply.view(-1), drop, x.clone(), keep, seeds)


_MASK32 = 0xFFFFFFFF


def _mul32(h: torch.Tensor, constant: int) -> torch.Tensor:
    """``h * constant mod 2^32`` for int64 tensors of 32-bit values, in two 16-bit halves of the
    constant so that no product leaves the int64 range."""
    low = h * (constant & 0xFFFF)
    high = ((h * (constant >> 16)) & 0xFFFF) << 16
    return (low + high) & _MASK32


def _mix32(h: torch.Tensor) -> torch.Tensor:
    """A 32-bit integer hash (the "lowbias32" finalizer of C. Wellons' hash-prospector)."""
    h = h ^ (h >> 16)
    h = _mul32(h, 0x7FEB352D)
    h = h ^ (h >> 15)
    h = _mul32(h, 0x846CA68B)
    return h ^ (h >> 16)


def seeded_normal(seeds: torch.Tensor, shape: tuple[int, ...] | torch.Size) -> torch.Tensor:
    """Standard normal float32 noise ``(N, *shape)`` whose row ``i`` depends on ``seeds[i]``
    (non-negative int64) only: a counter-based generator, element ``j`` of a row hashing the seed
    with the counters ``2j`` and ``2j + 1`` into two uniforms (Box-Muller). Any slice of a batch
    thus gets its rows without drawing the others'."""
    count = math.prod(int(side) for side in shape)
    seeds = seeds.view(-1, 1)
    key = _mix32(_mix32(seeds & _MASK32) ^ (seeds >> 32))  # (N, 1), from both halves of the seed
    counter = torch.arange(2 * count, device=seeds.device, dtype=torch.int64).view(1, -1)
    bits = _mix32((key + _mul32(counter, 0x9E3779B9)) & _MASK32)  # a Weyl sequence per row, hashed
    u1 = (bits[:, 0::2].float() + 1.0) / 2.0**32  # in (0, 1]: the logarithm stays finite
    u2 = bits[:, 1::2].float() / 2.0**32
    normal = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos(2.0 * torch.pi * u2)
    return normal.view(-1, *shape)


# ------------------------------------------------------------------------------------------
# Recipe builders: the papers' parameters, scaled for small images.
# ------------------------------------------------------------------------------------------


def _spec(overrides: dict[str, Any], **fields: Any) -> ViewSpec:
    return from_dict(ViewSpec, {**fields, **overrides}, "augment")


# BYOL's colour jitter (arXiv 2006.07733, table 6), also the multi-crop recipes' default.
_BYOL_COLOUR = dict(brightness=0.4, contrast=0.4, saturation=0.2, hue=0.1)


def _blur(image_size: int, p: float) -> float:
    """Blur probability ``p`` on large images; none on small ones (the CIFAR variants)."""
    return 0.0 if image_size <= SMALL_IMAGE else p


def _byol_pair(image_size: int, overrides: dict[str, Any], **fields: Any) -> list[ViewSpec]:
    """BYOL's asymmetric two views: blur p=1.0 / 0.1 (large images only), solarization p=0 / 0.2."""
    return [
        _spec(overrides, **fields, blur_p=_blur(image_size, blur), solarize_p=solarize)
        for blur, solarize in ((1.0, 0.0), (0.1, 0.2))
    ]


def simclr(image_size: int, **overrides: Any) -> Recipe:
    """SimCLR (Chen et al. 2020, arXiv 2002.05709, appendix A): crop (0.08, 1), flip, colour
    jitter with strength s (0.8s, 0.8s, 0.8s, 0.2s) applied with p=0.8 (s=1 on ImageNet, 0.5 on
    CIFAR), grayscale p=0.2, Gaussian blur p=0.5 on ImageNet only (not used on CIFAR)."""
    s = 0.5 if image_size <= SMALL_IMAGE else 1.0
    jitter = dict(brightness=0.8 * s, contrast=0.8 * s, saturation=0.8 * s, hue=0.2 * s)
    return Recipe("simclr", [_spec(overrides, size=image_size, count=2, **jitter, blur_p=_blur(image_size, 0.5))])


def byol(image_size: int, **overrides: Any) -> Recipe:
    """BYOL's asymmetric views (Grill et al. 2020, arXiv 2006.07733, table 6): jitter
    (0.4, 0.4, 0.2, 0.1) p=0.8, grayscale 0.2, blur p=1.0 / 0.1, solarization p=0.0 / 0.2.
    On small images blur is off in both views, as in the CIFAR recipes of solo-learn and lightly."""
    return Recipe("byol", _byol_pair(image_size, overrides, size=image_size, **_BYOL_COLOUR))


def crop_sizes(image_size: int, overrides: dict[str, Any], global_size: int | None, local_size: int | None) -> tuple[int, int]:
    """``(global, local)`` sides of a multi-crop recipe. ``size`` among the overrides is the
    global side (a synonym of ``global_size``): it never reaches the local views. The local side
    defaults to 96/224 of the global one (SwAV's and DINO's 224/96 px on ImageNet), in multiples
    of 8 px."""
    if "size" in overrides:
        size = overrides.pop("size")
        if global_size is not None and global_size != size:
            raise ConfigError(f"augment.size ({size}) and augment.global_size ({global_size}) disagree; set one.")
        global_size = size
    global_size = int(global_size or image_size)
    if local_size is None:
        local_size = max(8, 8 * round(global_size * 96 / 224 / 8))
    if global_size < 1 or local_size < 1:
        raise ConfigError(f"crop sizes must be >= 1 px, got global {global_size} and local {local_size}.")
    return global_size, int(local_size)


def multicrop(
    image_size: int,
    num_local: int = 6,
    global_size: int | None = None,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.14, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.14),
    **overrides: Any,
) -> Recipe:
    """Multi-crop (SwAV, Caron et al. 2020, arXiv 2006.09882; official
    ``scripts/swav_200ep_bs256_pretrain.sh``): 2 global views of ``global_size`` (default: the
    stored side) with scale (0.14, 1) and ``num_local`` local views of ``local_size`` (default
    96/224 of the global side) with scale (0.05, 0.14). The colour pipeline is BYOL's unless
    overridden (SwAV overrides it with SimCLR's, as its official code); blur only on large images."""
    global_size, local_size = crop_sizes(image_size, overrides, global_size, local_size)
    views = [
        _spec(overrides, **_BYOL_COLOUR, size=side, count=count, crop_scale=tuple(scale), blur_p=_blur(image_size, 0.5))
        for side, count, scale in ((global_size, 2, global_scale), (local_size, num_local, local_scale))
    ]
    return Recipe("multicrop", views)


def dino(
    image_size: int,
    num_local: int = 8,
    global_size: int | None = None,
    local_size: int | None = None,
    global_scale: tuple[float, float] = (0.4, 1.0),
    local_scale: tuple[float, float] = (0.05, 0.4),
    **overrides: Any,
) -> Recipe:
    """DINO's multi-crop (Caron et al. 2021, arXiv 2104.14294; ``DataAugmentationDINO`` of the
    official code): two global views of ``global_size`` (default: the stored side), scale
    (0.4, 1), with BYOL's asymmetric blur (p=1.0 / 0.1) and solarization (p=0 / 0.2), and
    ``num_local`` local views of ``local_size`` (default 96/224 of the global side), scale
    (0.05, 0.4), blur p=0.5; colour as BYOL's. Blur only on large images (as in ``byol``).
    Without local views the official code recommends ``global_scale=[0.14, 1]``."""
    global_size, local_size = crop_sizes(image_size, overrides, global_size, local_size)
    pair = _byol_pair(image_size, overrides, **_BYOL_COLOUR, crop_scale=tuple(global_scale), size=global_size)
    local = dict(crop_scale=tuple(local_scale), size=local_size, count=num_local, blur_p=_blur(image_size, 0.5))
    return Recipe("dino", [*pair, _spec(overrides, **_BYOL_COLOUR, **local)])


def cmc_lab(image_size: int, **overrides: Any) -> Recipe:
    """CMC (Tian et al. 2019): crop (0.2, 1) and flip, then the L and ab channels of CIE Lab."""
    spec = _spec(
        overrides, size=image_size, count=1, crop_scale=(0.2, 1.0), jitter_p=0.0, grayscale_p=0.0, normalize=False
    )
    return LabRecipe("cmc_lab", [spec])


def cpc_patches(
    image_size: int,
    patch_size: int | None = None,
    stride: int | None = None,
    channel_drop_p: float = 0.5,
    **overrides: Any,
) -> Recipe:
    """CPC v2's patch grid (Hénaff et al. 2019, arXiv 1905.09272, section 4.1 and appendix A).

    Geometry: :func:`cpc_geometry` (32 px: 8 px patches every 4 px, a 7x7 grid; 224 px: 69 px
    every 31 px, 6x6). The whole image gets v2's crop: resized to 300 px, a random 260 px square
    (side 0.87, area 0.75, any position), and a flip. Each patch then gets what of v2's per-patch
    pipeline the batched ops provide: a random crop of 60-100% of its area resized back (spatial
    jitter), a flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p=0.8 (v2: Szegedy et al.'s colour
    distortions, p=0.8), grayscale with p=0.25 (v2), and colour dropping (v2's "RC" step) on half
    the patches. Left out: v2's AutoAugment operations, elastic deformation/shearing and
    colour-histogram changes (p=0.2 each), which have no batched op here.

    ``overrides`` set fields of the per-patch view; its ``size`` upsamples every patch to that
    side for backbones that need larger inputs (default: ``patch_size``, no resampling).
    """
    patch_size, stride, _ = cpc_geometry(image_size, patch_size, stride)
    if not 0.0 <= channel_drop_p <= 1.0:
        raise ConfigError(f"cpc channel_drop_p must be a probability in [0, 1], got {channel_drop_p}.")
    area = (260 / 300) ** 2
    whole = _spec(
        {}, size=image_size, crop_scale=(area, area), crop_ratio=(1.0, 1.0), flip_p=0.5,
        jitter_p=0.0, grayscale_p=0.0, normalize=False,
    )
    per_patch = _spec(overrides, size=patch_size, crop_scale=(0.6, 1.0), grayscale_p=0.25)
    return PatchRecipe("cpc_patches", [whole, per_patch], patch_size=patch_size, stride=stride, channel_drop_p=channel_drop_p)


RECIPES: dict[str, Callable[..., Recipe]] = {
    builder.__name__: builder for builder in (simclr, byol, multicrop, dino, cmc_lab, cpc_patches)
}


def available_recipes() -> list[str]:
    return sorted(RECIPES)


def register_recipe(name: str) -> Callable[[Callable[..., Recipe]], Callable[..., Recipe]]:
    def decorator(builder: Callable[..., Recipe]) -> Callable[..., Recipe]:
        RECIPES[name] = builder
        return builder

    return decorator


def create_recipe(name: str, image_size: int, **overrides: Any) -> Recipe:
    """Build recipe ``name`` for images of ``image_size`` px; ``overrides`` set the builder's own
    parameters (e.g. ``num_local``) or any :class:`ViewSpec` field on every view."""
    if name not in RECIPES:
        raise ConfigError(f"unknown augmentation recipe '{name}'.{closest(name, RECIPES)} Available: {', '.join(available_recipes())}.")
    builder = RECIPES[name]
    own = [p for p in inspect.signature(builder).parameters if p not in ("image_size", "overrides")]
    valid = own + [f.name for f in dataclasses.fields(ViewSpec)]
    for key in overrides:
        if key not in valid:
            raise ConfigError(f"unknown augmentation key '{key}' for recipe '{name}'.{closest(key, valid)} Valid keys: {', '.join(valid)}.")
    # The builder's own parameters are checked against their annotations as the ViewSpec fields
    # are (a wrong type is a ConfigError naming the key, never a TypeError inside the builder).
    hints = typing.get_type_hints(builder)
    overrides = {k: coerce(v, hints[k], f"augment.{k}") if k in own and k in hints else v for k, v in overrides.items()}
    recipe = builder(image_size, **overrides)
    if recipe.num_views < 1:
        raise ConfigError(f"recipe '{name}' with these settings makes no view (every view's count is 0).")
    return recipe
