"""Transparent decode and encode maths as plain functions (tensors in, tensors out).

Shapes: pixels/images ``[B, C, H, W]`` (NCHW) unless a name says ``bhwc``; latents
``[B, C, H/8, W/8]`` (C: 4 for SDXL, 16 for FLUX); colours in [0, 1]; alpha straight (not premultiplied).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F

from .variants import SDXL, TransparentVariant

# The 8 test-time augmentations: horizontal flip off/on x rotation by k * 90 degrees.
AUGMENTATIONS: tuple[tuple[bool, int], ...] = tuple((flip, k) for flip in (False, True) for k in range(4))
IDENTITY: tuple[tuple[bool, int], ...] = ((False, 0),)
GREY = 0.5
PYRAMID_FACTOR = 1.2


def augment(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """Flip (last axis) then rotate by ``k`` quarter turns: ``[B, C, H, W]``."""
    if flip:
        x = x.flip(-1)
    return torch.rot90(x, k, dims=(-2, -1))


def unaugment(x: torch.Tensor, flip: bool, k: int) -> torch.Tensor:
    """The inverse of `augment`."""
    x = torch.rot90(x, -k, dims=(-2, -1))
    return x.flip(-1) if flip else x


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pad ``[B, C, H, W]`` at the bottom and right (edge values repeated) to multiples of ``multiple``."""
    h, w = x.shape[-2:]
    pad_h, pad_w = (-h) % multiple, (-w) % multiple
    if pad_h == 0 and pad_w == 0:
        return x
    return F.pad(x, (0, pad_w, 0, pad_h), mode="replicate")


def decode_rgba(
    decoder: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    pixels: torch.Tensor,
    latent: torch.Tensor | None,
    *,
    size_multiple: int,
    latent_scale: int = 8,
    augmentations: Iterable[tuple[bool, int]] = AUGMENTATIONS,
    sub_batch: int = 8,
    on_progress: Callable[[int], None] | None = None,
    variant: TransparentVariant = SDXL,
) -> torch.Tensor:
    """RGBA ``[B, 4, H, W]`` (R, G, B, straight alpha, in [0, 1]) from the base VAE's RGB
    ``pixels [B, 3, H, W]`` and the raw ``latent [B, C, H/8, W/8]`` (C: the variant's latent
    channels; None: decode from pixels alone, with an all-zero latent; any H and W then).

    ``decoder(pixels, latent) -> [n, 4, h, w]`` (in ``variant.decoder_output_order``: SDXL
    [alpha, R, G, B], FLUX [R, G, B, alpha]) runs on each augmented variant
    (padded to ``size_multiple``); each output is clipped to [0, 1], undone, and the per-pixel
    median of the variants is taken (torch's median: the lower of the two middle values for an
    even count). Variants run ``sub_batch`` at a time; ``on_progress(n)`` reports each finished one.
    """
    b, _, h, w = pixels.shape
    padded = pad_to_multiple(pixels, size_multiple)
    if latent is None:
        latent_size = (padded.shape[-2] // latent_scale, padded.shape[-1] // latent_scale)
        padded_latent = pixels.new_zeros((b, variant.latent_channels, *latent_size))
    elif not latent_fits(latent, pixels, latent_scale):
        raise ValueError(f"latent {tuple(latent.shape)} does not fit pixels {tuple(pixels.shape)} at scale {latent_scale}")
    else:
        padded_latent = pad_to_multiple(latent, size_multiple // latent_scale)
    variants = list(augmentations)
    # Work items grouped by output orientation, so each sub-batch has one shape.
    items = sorted(((i, v) for i in range(b) for v in range(len(variants))), key=lambda item: variants[item[1]][1] % 2)
    results: list[list[torch.Tensor | None]] = [[None] * len(variants) for _ in range(b)]
    start = 0
    while start < len(items):
        odd = variants[items[start][1]][1] % 2
        chunk = [it for it in items[start : start + sub_batch] if variants[it[1]][1] % 2 == odd]
        start += len(chunk)
        px = torch.cat([augment(padded[i : i + 1], *variants[v]) for i, v in chunk])
        lt = torch.cat([augment(padded_latent[i : i + 1], *variants[v]) for i, v in chunk])
        out = decoder(px, lt).clamp(0.0, 1.0)
        for j, (i, v) in enumerate(chunk):
            results[i][v] = unaugment(out[j : j + 1], *variants[v])[..., :h, :w].to(pixels.dtype)
        if on_progress is not None:
            on_progress(len(chunk))
    stacked = torch.stack([torch.cat(r, dim=0) for r in results], dim=1)  # [V, B, 4, H, W]
    decoded = stacked[0] if len(variants) == 1 else torch.median(stacked, dim=0).values
    return decoded[:, variant.to_rgba]


def latent_fits(latent: torch.Tensor, pixels: torch.Tensor, latent_scale: int = 8) -> bool:
    """True when ``latent [B, C, h, w]`` is the latent of ``pixels [B, C, h * scale, w * scale]``."""
    h, w = pixels.shape[-2:]
    return latent.shape[0] == pixels.shape[0] and tuple(latent.shape[-2:]) == (h / latent_scale, w / latent_scale)


def same_aspect(latent: torch.Tensor, pixels: torch.Tensor, latent_scale: int = 8) -> bool:
    """True when ``pixels [B, C, H, W]`` could be an upscale (or downscale) of the decode of
    ``latent [B, C, h, w]``: the same rows and the same aspect ratio, up to one latent cell."""
    h, w = latent.shape[-2:]
    big_h, big_w = pixels.shape[-2:]
    if latent.shape[0] != pixels.shape[0] or not (h and w and big_h and big_w):
        return False
    factor = big_w / (w * latent_scale)
    return abs(big_h - factor * h * latent_scale) <= factor * latent_scale


def rgba_planes(image_bhwc: torch.Tensor, transparent_mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """An IMAGE ``[B, H, W, 3 or 4]`` (and optionally a MASK ``[B or 1, h, w]`` in ComfyUI's
    polarity, 1 = transparent, resized to the image) -> RGB ``[B, 3, H, W]`` and alpha
    ``[B, 1, H, W]``; alpha is None when neither gives one."""
    rgb = image_bhwc[..., :3].movedim(-1, 1).float()
    if transparent_mask is not None:
        mask = transparent_mask.reshape(-1, 1, *transparent_mask.shape[-2:]).float()
        if tuple(mask.shape[-2:]) != tuple(rgb.shape[-2:]):
            mask = F.interpolate(mask, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
        if mask.shape[0] not in (1, rgb.shape[0]):
            raise ValueError(f"{mask.shape[0]} masks for {rgb.shape[0]} images; give one mask, or one per image")
        return rgb, (1.0 - mask).expand(rgb.shape[0], -1, -1, -1)
    if image_bhwc.shape[-1] == 4:
        return rgb, image_bhwc[..., 3:4].movedim(-1, 1).float()
    return rgb, None


def encoder_input(rgb: torch.Tensor, alpha: torch.Tensor, variant: TransparentVariant = SDXL) -> torch.Tensor:
    """The latent-offset encoder's input ``[B, 4, H, W]``: alpha and the padded colour (`pad_rgb`)
    in the variant's order (SDXL: alpha first; FLUX: colour first)."""
    planes = {"a": alpha, "rgb": pad_rgb(rgb, alpha)}
    return torch.cat([planes[p] for p in variant.encoder_planes()], dim=1)


def offset_latent(mean: torch.Tensor, std: torch.Tensor, offset: torch.Tensor, variant: TransparentVariant = SDXL) -> torch.Tensor:
    """The transparent latent ``mean + std * offset_scale * offset`` (raw VAE space, ``[B, C, h, w]``)."""
    return mean + std * (offset * variant.offset_scale)


def flatten_on_grey(rgb: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """RGB composited over 50% grey: ``0.5 + (rgb - 0.5) * alpha`` (``alpha [B, 1, H, W]``)."""
    return GREY + (rgb - GREY) * alpha


def _area_resize(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return x if tuple(x.shape[-2:]) == size else F.interpolate(x, size=size, mode="area")


def pad_rgb(rgb: torch.Tensor, alpha: torch.Tensor, factor: float = PYRAMID_FACTOR, eps: float = 1e-6) -> torch.Tensor:
    """Fill invisible pixels with a smooth continuation of the visible colour.

    An area-downsampled pyramid (each level ``factor`` smaller) of premultiplied colour and alpha,
    seeded at the top with the alpha-weighted mean colour, composited coarse to fine: at every level
    ``fill = premultiplied + fill * (1 - alpha)``. Pixels with alpha 1 keep their colour exactly.
    ``rgb [B, 3, H, W]``, ``alpha [B, 1, H, W]`` -> ``[B, 3, H, W]``.
    """
    h, w = rgb.shape[-2:]
    premultiplied = rgb * alpha
    weight = alpha.sum(dim=(-2, -1), keepdim=True)
    fill = premultiplied.sum(dim=(-2, -1), keepdim=True) / weight.clamp_min(eps)
    fill = torch.where(weight > eps, fill, torch.full_like(fill, GREY))
    levels = max(0, math.ceil(math.log(max(h, w)) / math.log(factor)))
    sizes = sorted({(max(1, round(h / factor**i)), max(1, round(w / factor**i))) for i in range(levels + 1)})
    for size in sizes:
        fill = F.interpolate(fill, size=size, mode="bilinear", align_corners=False) if fill.shape[-2:] != size else fill
        a, p = _area_resize(alpha, size), _area_resize(premultiplied, size)
        fill = p + fill * (1.0 - a)
    return fill
