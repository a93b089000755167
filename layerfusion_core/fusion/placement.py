"""Placement hints (LayerFusion Placement) as plain functions: where each foreground should be, as a
box or a MASK, weighting that foreground's structure prior so that several objects do not claim the
same place (plain torch, no ComfyUI).

A hint ``h`` in [0, 1] per token weights the prior: ``s'_k <- s'_k * (1 - strength * (1 - h))``; at
strength 1 the prior is 0 outside the hint, so the object's soft and hard masks (``norm(s' * c)``)
stay inside it; at strength 0 nothing changes. Foregrounds without a hint keep their prior.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the picture's width and height


@dataclasses.dataclass(frozen=True)
class Hint:
    """One foreground's place: a box, or a mask ``[1 or N, H, W]`` (any size: resampled to each grid)."""

    box: Box | None = None
    mask: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if (self.box is None) == (self.mask is None):
            raise ValueError("a placement hint is a box or a mask")

    def on_grid(self, grid: tuple[int, int]) -> torch.Tensor:
        """The hint ``[1 or N, h*w]`` on a token grid (h, w): a box by token centres, a mask by area."""
        h, w = grid
        if self.box is not None:
            x0, y0, x1, y1 = self.box
            ys = (torch.arange(h, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, dtype=torch.float32) + 0.5) / w
            inside = ((ys >= y0) & (ys <= y1))[:, None] & ((xs >= x0) & (xs <= x1))[None, :]
            return inside.float().flatten()[None]
        return F.interpolate(self.mask.float()[:, None], size=grid, mode="area").flatten(1).clamp(0, 1)


@dataclasses.dataclass(frozen=True)
class Placement:
    """Every foreground's hint in z order (None: no hint), and how strongly they weigh the priors."""

    hints: tuple[Hint | None, ...]
    strength: float = 1.0
    steer: bool = False  # also weight each foreground's prompt (its cross-attention, cond against uncond) by its hint, in every call

    def weights(self, grid: tuple[int, int], foregrounds: int, sets: int, device: torch.device | str = "cpu") -> torch.Tensor:
        """``1 - strength * (1 - h)`` of each foreground of each set on a token grid: ``[sets, K, h*w]``
        (1 for a foreground without a hint)."""
        if len(self.hints) > foregrounds:
            raise ValueError(f"placement hints for {len(self.hints)} foregrounds, but the run has {foregrounds}")
        out = torch.ones(sets, foregrounds, grid[0] * grid[1], device=device)
        for k, hint in enumerate(self.hints):
            if hint is None:
                continue
            on_grid = hint.on_grid(grid).to(device)
            if on_grid.shape[0] not in (1, sets):
                raise ValueError(f"the placement mask of foreground {k + 1} has {on_grid.shape[0]} images for {sets} layered sets "
                                 "(give one, used for every set, or one per set)")
            out[:, k] = 1.0 - self.strength * (1.0 - on_grid)
        return out

    def weigh(self, prior: torch.Tensor, grid: tuple[int, int], foregrounds: int) -> torch.Tensor:
        """The structure prior ``[N * K, h*w]`` (set by set) with each foreground's hint applied (a new tensor)."""
        weights = self.weights(grid, foregrounds, prior.shape[0] // foregrounds, prior.device)
        return prior * weights.flatten(0, 1).to(prior.dtype)


def parse_box(text: str) -> Box:
    """``"x0 y0 x1 y1"`` (fractions of width and height, commas allowed) -> a box; ValueError otherwise."""
    parts = text.replace(",", " ").split()
    try:
        x0, y0, x1, y1 = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"{text!r} is not a box 'x0 y0 x1 y1' (four numbers from 0 to 1)") from None
    if not (0.0 <= x0 < x1 <= 1.0 and 0.0 <= y0 < y1 <= 1.0):
        raise ValueError(f"{text!r}: a box needs 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 (fractions of the picture)")
    return x0, y0, x1, y1
