"""The user's own background (LayerFusion Background) as plain functions: the composite held to the
photo outside a band around the object (plain torch, no ComfyUI).

The background rows are held to the photo by ComfyUI's own inpainting mask (the LATENT's
``noise_mask``: 0 = keep). From ``start`` of the schedule on, the blend rows are held the same way
outside the *band*: the hard mask of the structure block (``sigmoid(d * (norm(s' * c) - 0.5))``,
taken above 0.5), grown by ``dilate_px`` and feathered inwards over ``feather_px``, so the band is
exactly 0 outside the grown mask (the composite there is the photo, noised to each step) and the
composite is free inside it to add the object, its shadow and its reflected light.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F

from ..layout.latents import LATENT_SCALE
from ..layout.streams import THREE_STREAMS, Layout, Stream
from .blending import masks
from .priors import resize_map


@dataclasses.dataclass(frozen=True)
class PhotoHold:
    """How the composite is held to the photo (LayerFusion Background's inputs)."""

    start: float = 0.0  # fraction of the schedule (ComfyUI percent) from which the blend rows are held
    dilate_px: int = 64  # the hard mask grown by this many pixels: room for a contact shadow
    feather_px: int = 32  # the band's edge ramps from 0 to 1 over this many pixels, inside the grown mask

    @property
    def dilate_cells(self) -> int:
        return math.ceil(self.dilate_px / LATENT_SCALE)

    @property
    def feather_cells(self) -> int:
        return math.ceil(self.feather_px / LATENT_SCALE)


def band(hard: torch.Tensor, dilate_cells: int, feather_cells: int) -> torch.Tensor:
    """``hard [N, h, w]`` -> the band ``[N, h, w]`` in [0, 1]: 1 where the composite is free.

    The object (``hard > 0.5``) is grown by ``dilate_cells`` (a square neighbourhood); the band is
    that grown mask with its edge ramped: the mean of it and its first ``feather_cells - 1``
    erosions, so a cell ``k`` cells inside the edge gets ``(k + 1) / feather_cells`` (capped at 1)
    and every cell outside the grown mask exactly 0."""
    grown = (hard > 0.5).to(torch.float32)[:, None]
    if dilate_cells > 0:
        grown = F.max_pool2d(grown, 2 * dilate_cells + 1, stride=1, padding=dilate_cells)
    if feather_cells <= 1:
        return grown[:, 0]
    total, eroded = grown.clone(), grown
    for _ in range(feather_cells - 1):
        # erosion = 1 - dilation of the outside; the picture's border counts as inside
        eroded = 1.0 - F.max_pool2d(F.pad(1.0 - eroded, (1, 1, 1, 1), value=0.0), 3, stride=1)
        total += eroded
    return (total / feather_cells)[:, 0]


def hold_band(prior: torch.Tensor, prior_grid: tuple[int, int], content: torch.Tensor | None, d: float,
              norm_quantile: float, latent_grid: tuple[int, int], hold: PhotoHold, layout: Layout = THREE_STREAMS) -> torch.Tensor:
    """The band ``[N, h, w]`` on the latent grid from the structure prior ``[N * K, M]`` on ``prior_grid``
    and the structure block's content map (``[N * K, M]``, None before the first one): around the
    union of the K objects of each set."""
    _soft, hard = masks(prior, content, d, norm_quantile)
    hard = resize_map(hard.float(), prior_grid, latent_grid).view(-1, layout.foregrounds, *latent_grid).amax(dim=1)
    return band(hard, hold.dilate_cells, hold.feather_cells)


def held_blend_rows(denoise_mask: torch.Tensor, band_map: torch.Tensor, layout: Layout = THREE_STREAMS) -> torch.Tensor:
    """``denoise_mask [N * per_set, C, h, w]`` (1 = generate) with each set's blend row multiplied by its
    band ``[N, h, w]`` (a new tensor; the other rows unchanged)."""
    out = denoise_mask.clone()
    rows = layout.rows(out.shape[0], Stream.BLEND).to(out.device)
    out[rows] = out[rows] * band_map[:, None].to(out)
    return out
