"""MAE — He, Chen, Xie, Li, Dollár, Girshick 2021, "Masked Autoencoders Are Scalable Vision
Learners" (arXiv 2111.06377); official code: facebookresearch/mae."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from functools import partial

import torch
from torch import nn

from ..augment.recipes import IMAGENET_MEAN, IMAGENET_STD
from ..errors import ConfigError
from ..losses import mae_loss
from ..nn import get_world_size, rank_slice
from ..nn.masking import encode_visible, patchify, random_masking, sincos_pos_embed_2d, unpatchify, vit_body
from .base import Method, MethodConfig, RecipeChoice
from .registry import register


@dataclass
class MAEConfig(MethodConfig):
    """MAE's hyper-parameters (section 3 and 4, and the official code's defaults)."""

    mask_ratio: float = 0.75  # fraction of patches removed per image (section 4, Figure 5: 75% is best)
    # The decoder: 8 Transformer blocks of width 512, 16 heads (the official mae_vit_*_dec512d8b);
    # it exists only during pre-training, so its size costs no accuracy at evaluation.
    decoder_dim: int = 512  # width of the decoder's tokens
    decoder_depth: int = 8  # Transformer blocks of the decoder
    decoder_heads: int = 16  # attention heads of each decoder block
    # Targets are the pixels of each patch normalized by that patch's mean and std (the official
    # --norm_pix_loss, used for every result of the paper's "normalized pixels" rows, Table 1d).
    normalize_target: bool = True
    # Fixed 2-D sin-cos position embeddings in the encoder and the decoder, as the official code;
    # false keeps timm's learned encoder embedding (the decoder's stays fixed).
    sincos_pos_embed: bool = True

    def validate_fields(self) -> None:
        if not 0.0 < self.mask_ratio < 1.0:
            raise ConfigError(f"mae mask_ratio must be in (0, 1), got {self.mask_ratio} (paper: 0.75).")
        if min(self.decoder_dim, self.decoder_depth, self.decoder_heads) < 1:
            raise ConfigError("mae decoder_dim, decoder_depth and decoder_heads must be >= 1.")
        if self.decoder_dim % self.decoder_heads or self.decoder_dim % 4:
            raise ConfigError(
                f"mae decoder_dim ({self.decoder_dim}) must be divisible by decoder_heads ({self.decoder_heads}) and by 4 "
                "(the 2-D sin-cos position embedding)."
            )


class MAEDecoder(nn.Module):
    """Encoder tokens -> width ``dim``; a shared, learned mask token at every masked position;
    fixed sin-cos positions; Transformer blocks; a linear map to each patch's pixels."""

    def __init__(self, in_dim: int, num_patches: int, patch_pixels: int, config: MAEConfig) -> None:
        super().__init__()
        self.embed = nn.Linear(in_dim, config.decoder_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, config.decoder_dim))
        grid = round(num_patches**0.5)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(config.decoder_dim, grid).unsqueeze(0), persistent=False)
        from timm.models.vision_transformer import Block

        norm = partial(nn.LayerNorm, eps=1e-6)  # the official norm_layer
        self.blocks = nn.Sequential(
            *[Block(config.decoder_dim, config.decoder_heads, 4.0, qkv_bias=True, norm_layer=norm) for _ in range(config.decoder_depth)]
        )
        self.norm = norm(config.decoder_dim)
        self.predict = nn.Linear(config.decoder_dim, patch_pixels)
        # The official initialization: Xavier-uniform linear layers, zero biases, N(0, 0.02) mask token.
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward(self, latent: torch.Tensor, ids_restore: torch.Tensor, prefix: int) -> torch.Tensor:
        """``latent`` ``(N, prefix + K, D)`` -> predicted pixels ``(N, L, P)`` of every patch."""
        x = self.embed(latent)
        n, length = ids_restore.shape
        visible = x[:, prefix:]
        tokens = torch.cat((visible, self.mask_token.expand(n, length - visible.shape[1], -1).to(x.dtype)), dim=1)
        tokens = torch.gather(tokens, 1, ids_restore.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # back to patch order
        # One [CLS] token (the first prefix token) joins the patches, as the official decoder.
        x = torch.cat((x[:, :1], tokens), dim=1) + self.pos_embed.to(x.dtype)
        return self.predict(self.norm(self.blocks(x)))[:, 1:]


@register
class MAE(Method):
    """A ViT encoder sees only a random 25% of each image's patches (no mask tokens); a light
    Transformer decoder takes the encoded visible patches and a mask token at each removed
    position and predicts the removed patches' pixels, normalized per patch; the loss is the mean
    squared error on the removed patches only (:func:`selfsup.losses.mae_loss`).

    The mask is drawn per sample by sorting uniform noise (the official ``random_masking``), the
    noise of the global batch drawn from the default generator (identical on every process) and
    sliced per rank, so two processes mask exactly as one. The loss is a mean over the same number
    of masked patches per image, so DDP's average is the global batch's loss.

    The probes read the encoder's [CLS] token after the final norm: the backbone's own forward on
    the full image (timm's ``global_pool="token"``), the official linear probe's default
    (main_linprobe.py: ``--cls_token``). The [CLS] token is encoded with the visible patches
    and handed to the decoder, as in the official code.
    """

    name = "mae"
    description = "masked image modelling: ViT encoder on 25% of patches, light decoder predicts the rest (He et al. 2021)"
    paper = "arXiv 2111.06377"
    Config = MAEConfig
    # AdamW, base lr 1.5e-4 per 256 images, weight decay 0.05 (none on biases and norms), betas
    # (0.9, 0.95): PRETRAIN.md and main_pretrain.py. Warmup: the engine's min(10, epochs / 10)
    # epochs (official: 40 of 800).
    optim_defaults = {"optimizer": "adamw", "lr": 1.5e-4, "weight_decay": 0.05, "adamw_betas": (0.9, 0.95)}
    default_backbone = "vit_small"  # ViT-S/4 at 32 px, solo-learn's CIFAR MAE (scripts/pretrain/cifar/mae.yaml)

    def __init__(self, backbone, config: MAEConfig) -> None:  # noqa: ANN001
        super().__init__(backbone, config)
        body = vit_body(backbone, "mae")
        if getattr(body, "global_pool", "token") != "token":  # pooled features would bypass the trained final norm
            raise ConfigError(f"mae's probes read the [CLS] token; backbone global_pool must be 'token', got '{body.global_pool}'.")
        self.patch_size = int(body.patch_embed.patch_size[0])
        num_patches = int(body.patch_embed.num_patches)
        in_channels = int(backbone.build_args.get("in_channels", 3))
        if config.sincos_pos_embed and body.pos_embed is not None:
            prefix = body.pos_embed.shape[1] - num_patches  # 0 when timm adds no position to [CLS]
            with torch.no_grad():
                body.pos_embed.copy_(sincos_pos_embed_2d(body.pos_embed.shape[-1], round(num_patches**0.5), prefix))
            body.pos_embed.requires_grad_(False)
        self.decoder = MAEDecoder(backbone.feature_dim, num_patches, self.patch_size**2 * in_channels, config)

    def describe(self) -> dict[str, Any]:
        c = self.config
        decoder = self.decoder
        return {
            "mask_ratio": c.mask_ratio, "patch_size": self.patch_size, "normalize_target": c.normalize_target,
            "decoder": {"dim": decoder.embed.out_features, "depth": len(decoder.blocks),
                        "heads": decoder.blocks[0].attn.num_heads if len(decoder.blocks) else 0,
                        "outputs": decoder.predict.out_features},
        }

    def default_recipe(self, image_size: int) -> RecipeChoice:
        # One view: random resized crop of scale (0.2, 1) and a flip, nothing else (main_pretrain.py).
        return RecipeChoice("simclr", {"count": 1, "crop_scale": (0.2, 1.0), "jitter_p": 0.0, "grayscale_p": 0.0, "blur_p": 0.0})

    def masked_forward(
        self, images: torch.Tensor, noise: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(loss, predicted pixels ``(N, L, P)``, mask ``(N, L)``) of ``images`` masked by ``noise``."""
        body = self.backbone.body
        ids_keep, mask, ids_restore = random_masking(noise, self.config.mask_ratio)
        latent = encode_visible(body, images, ids_keep)
        prediction = self.decoder(latent, ids_restore, body.num_prefix_tokens)
        patches = patchify(images, self.patch_size)
        return mae_loss(prediction, patches, mask, self.config.normalize_target), prediction, mask

    def forward(self, views: list[torch.Tensor], index: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        images = views[0]
        n, length = images.shape[0], int(self.backbone.body.patch_embed.num_patches)
        noise = rank_slice(torch.rand(n * get_world_size(), length, device=images.device), n)
        return {"loss": self.masked_forward(images, noise)[0]}

    @torch.no_grad()
    def report_images(self, images: torch.Tensor) -> tuple[str, dict[str, torch.Tensor]]:
        """Reconstructions of uint8 ``(B, H, W, 3)`` images with a fixed random mask: the masked
        input (removed patches grey), the reconstruction (the decoder's pixels on the removed
        patches, the visible ones pasted in, as the official demo) and the original. With
        normalized targets each predicted patch is mapped back with the true patch's mean and std."""
        x = self.eval_transform(images)
        noise = torch.rand(x.shape[0], int(self.backbone.body.patch_embed.num_patches),
                           generator=torch.Generator().manual_seed(0)).to(x.device)
        _, prediction, mask = self.masked_forward(x, noise)
        patches = patchify(x, self.patch_size)
        prediction = prediction.float()
        if self.config.normalize_target:
            patch_std = torch.sqrt(patches.var(dim=-1, keepdim=True) + 1e-6)
            prediction = prediction * patch_std + patches.mean(dim=-1, keepdim=True)
        keep = (1 - mask).unsqueeze(-1)
        mean, std = (torch.tensor(v, device=x.device).view(1, 3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
        grey = patchify(((0.5 - mean) / std).expand_as(x), self.patch_size)  # 0.5 in every channel, normalized

        def to_uint8(p: torch.Tensor) -> torch.Tensor:
            rgb = unpatchify(p, self.patch_size) * std + mean
            return (rgb.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()

        columns = {
            "masked input": to_uint8(patches * keep + grey * (1 - keep)),
            "reconstruction": to_uint8(patches * keep + prediction * (1 - keep)),
            "original": images.cpu(),
        }
        title = f"Reconstructions ({round(100 * self.config.mask_ratio)}% of the patches masked)"
        return title, columns
