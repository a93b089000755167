"""What the toy world's measurements share: masks compared (IoU), colours found, foregrounds shown over
a checkerboard, per-case numbers summarised, and rows of cells written as one picture."""

from __future__ import annotations

import statistics
from pathlib import Path

import torch


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    union = (a | b).sum().item()
    return (a & b).sum().item() / union if union else 0.0


def near(rgb: torch.Tensor, colour: tuple[float, float, float], tolerance: float) -> torch.Tensor:
    return (rgb - torch.tensor(colour, dtype=rgb.dtype)).abs().amax(dim=-1) < tolerance


def has_colour(rgba: torch.Tensor, colour: tuple[float, float, float]) -> bool:
    """Whether a foreground ``[H, W, 4]`` has an object (alpha > 0.5 on more than 1 % of it) whose mean
    colour is near ``colour``."""
    obj = rgba[..., 3] > 0.5
    return bool(obj.sum() > 0.01 * obj.numel()) and bool(near(rgba[..., :3][obj].mean(0), colour, 0.25).item())


def checker(rgba: torch.Tensor) -> torch.Tensor:
    """``rgba`` ``[H, W, 4]`` (straight alpha) over a grey checkerboard of 16 px squares: ``[H, W, 3]``."""
    h, w = rgba.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    board = torch.where(((ys // 16 + xs // 16) % 2 == 0), 0.8, 0.6).unsqueeze(-1).expand(h, w, 3)
    return rgba[..., :3] * rgba[..., 3:] + board * (1 - rgba[..., 3:])


def summarise(rows: list[dict[str, float]], names: tuple[str, ...]) -> dict[str, tuple[float, float]]:
    """Mean and spread of each of ``names`` over ``rows`` (NaN entries left out)."""
    out = {}
    for claim in names:
        values = [r[claim] for r in rows if r[claim] == r[claim]]
        out[claim] = (statistics.fmean(values), statistics.pstdev(values)) if values else (float("nan"), float("nan"))
    return out


def save_grid(rows: list[list[torch.Tensor]], path: Path) -> None:
    """Rows of ``[H, W, 3]`` cells in [0, 1], side by side, one row under the other, as a PNG at ``path``."""
    import numpy as np
    from PIL import Image

    grid = torch.cat([torch.cat([c.float().cpu() for c in cells], dim=1) for cells in rows], dim=0).clamp(0, 1).numpy()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((grid * 255).round().astype(np.uint8)).save(path)
