"""The in-memory image set every source produces, and the decoding shared by all sources."""

from __future__ import annotations

import dataclasses
import io
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

# PIL's own guard only warns below 2 x 89 M pixels; we refuse earlier and say why, because a
# 10,000 x 10,000 image in a folder of photos is far more likely a mistake (or an attack) than data.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000
# Our guard runs right after Pillow reads the header, before any pixel is decoded, and refuses
# every image over the limit with a message; Pillow's own warning (at 89 M pixels) would only
# repeat it as noise. Pillow's hard error (at 179 M) is kept, and reported as the same guard.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass
class ImageSet:
    """Images of one split of one source.

    ``images`` is uint8 ``(N, H, W, 3)`` when held in memory; a large folder is streamed instead and
    keeps only ``paths`` (``images`` is then ``None``). ``labels`` holds class indices, -1 where
    unknown; the sample index of image ``i`` is ``i`` (InstDisc and CMC index memory banks with it).
    """

    name: str
    split: str
    labels: torch.Tensor
    classes: list[str]
    images: torch.Tensor | None = None
    paths: list[str] | None = None
    image_size: int | None = None
    skipped: list[str] = field(default_factory=list)
    origin: str = ""  # where the images come from, for messages (e.g. "photos/ (held-out 10% of each class)")

    def __post_init__(self) -> None:
        if self.images is not None and self.image_size is None:
            self.image_size = int(self.images.shape[1])

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def streamed(self) -> bool:
        return self.images is None

    @property
    def labelled(self) -> bool:
        return bool((self.labels >= 0).any())

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def subset(self, indices: torch.Tensor | np.ndarray | list[int]) -> ImageSet:
        """The images at ``indices``, renumbered 0..len(indices)-1."""
        idx = torch.as_tensor(np.asarray(indices), dtype=torch.long)
        return dataclasses.replace(
            self,
            labels=self.labels[idx].clone(),
            classes=list(self.classes),
            images=None if self.images is None else self.images[idx].clone(),
            paths=None if self.paths is None else [self.paths[i] for i in idx.tolist()],
            skipped=[],
        )

    def describe(self) -> str:
        """``origin`` (or the name and split) and the number of images, for messages."""
        return f"{self.origin or f'{self.name} ({self.split})'}: {len(self)} images"


def resize_center_crop(image: Image.Image, size: int) -> Image.Image:
    """Shorter side to ``size`` (antialiased), then the central ``size`` x ``size`` square."""
    width, height = image.size
    if (width, height) == (size, size):
        return image
    scale = size / min(width, height)
    new_w, new_h = max(size, round(width * scale)), max(size, round(height * scale))
    image = image.resize((new_w, new_h), Image.Resampling.BICUBIC, reducing_gap=None)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB: 16-bit scaled (not clipped), alpha composited on white,
    palette/CMYK/grayscale converted."""
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        array = np.asarray(image, dtype=np.float64)
        if mode == "F":  # floats: stretched to the full range
            lo, hi = float(array.min(initial=0)), float(array.max(initial=1))
            array = ((array - lo) / max(hi - lo, 1e-12) * 255 + 0.5).astype(np.uint8)
        else:
            peak = 65535.0 if array.max(initial=0) > 255 else 255.0
            array = np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(array, "L").convert("RGB")
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, image).convert("RGB")
    return image if mode == "RGB" else image.convert("RGB")


def open_image(
    source: str | Path | bytes, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS, draft_size: int | None = None
) -> Image.Image:
    """Open one image file (or encoded bytes) as RGB with its EXIF orientation applied.

    ``draft_size`` lets the JPEG decoder skip detail below that size (DCT scaling), which makes
    decoding a large photo to a small training size several times faster.

    Raises ``ValueError`` with a short reason for anything that is not a usable image.
    """
    try:
        try:
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
        except Image.DecompressionBombError as exc:
            raise ValueError(f"{exc} (a decompression-bomb guard)") from None
        width, height = image.size
        if width * height > max_pixels:
            raise ValueError(
                f"{width}x{height} px exceeds the limit of {max_pixels:,} pixels (a decompression-bomb guard; "
                "if the image is genuine, raise max_image_pixels)"
            )
        if draft_size is not None and image.format == "JPEG":
            image.draft("RGB", (draft_size, draft_size))
        image.seek(0)  # first frame of GIFs and multi-page TIFFs
        image = ImageOps.exif_transpose(image) or image
        image.load()
        return to_rgb(image)
    except ValueError:
        raise
    except Exception as exc:  # PIL raises many types for unreadable/truncated files
        raise ValueError(f"not a readable image ({type(exc).__name__}: {exc})") from None


def decode_to_array(source: str | Path | bytes, size: int | None, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> np.ndarray:
    """Decode one image to uint8 ``(size, size, 3)`` (or its own size when ``size`` is None)."""
    image = open_image(source, max_pixels, draft_size=size)
    if size is not None:
        image = resize_center_crop(image, size)
    return np.asarray(image, dtype=np.uint8)
