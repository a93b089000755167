"""LayerFusion's masks and attention-level blends as plain functions (docs/method.md).

Shapes: maps ``[S, M]`` (S images, M tokens); attention outputs ``[S, M, D]``.
"""

from __future__ import annotations

import dataclasses
import enum

import torch

from .priors import quantile_norm


class BgMode(str, enum.Enum):
    BG_FROM_BL = "bg_from_bl"  # the background follows the composite outside the object
    BL_FROM_BG = "bl_from_bg"  # the composite takes the background outside the object


@dataclasses.dataclass(frozen=True)
class BlendSwitches:
    """Which of the three exchanges run (for ablations); all on by default."""

    blend: bool = True  # a'_BL = a_FG * soft + a_BL * (1 - soft)
    fg: bool = True  # a'_FG = a'_BL * hard + a_FG * (1 - hard)
    bg: bool = True  # the background exchange (see BgMode)

    @property
    def any(self) -> bool:
        return self.blend or self.fg or self.bg


def masks(structure: torch.Tensor, content: torch.Tensor | None, d: float,
          norm_quantile: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``soft = norm(s' * c)`` and ``hard = sigmoid(d * (soft - 0.5))``, each ``[S, M]`` in [0, 1].
    With no content map yet (``None``), ``c = 1``. ``norm`` is min-max; below 1, ``norm_quantile``
    puts its top at that quantile of the map instead of its max (`priors.quantile_norm`)."""
    soft = quantile_norm(structure if content is None else structure * content, norm_quantile)
    return soft, torch.sigmoid(d * (soft - 0.5))


def blend(
    a_fg: torch.Tensor, a_bg: torch.Tensor, a_bl: torch.Tensor, soft: torch.Tensor, hard: torch.Tensor,
    mode: BgMode = BgMode.BG_FROM_BL, switches: BlendSwitches = BlendSwitches(),
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The attention-level blend of one block: ``a_* [S, M, D]``, masks ``[S, M]`` -> new (fg, bg, bl).
    `blend_stack` with one foreground (the same operations, so the same bits)."""
    (fg,), bg, bl = blend_stack([a_fg], a_bg, a_bl, [soft], [hard], mode, switches)
    return fg, bg, bl


def union(softs: list[torch.Tensor]) -> torch.Tensor:
    """Where any of several objects is: ``1 - prod(1 - soft_k)``, accumulated as ``u + s - u * s`` so
    that one mask is returned as it is."""
    out = softs[0]
    for soft in softs[1:]:
        out = out + soft - out * soft
    return out


def blend_stack(
    a_fgs: list[torch.Tensor], a_bg: torch.Tensor, a_bl: torch.Tensor, softs: list[torch.Tensor],
    hards: list[torch.Tensor], mode: BgMode = BgMode.BG_FROM_BL, switches: BlendSwitches = BlendSwitches(),
) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
    """The blend of one block with K foregrounds in z order (the first at the bottom), each with its
    own masks: ``a_* [S, M, D]``, masks ``[S, M]`` -> new (fgs, bg, bl).

    Foreground by foreground, bottom first, the object goes into the composite
    (``bl = lerp(bl, a_fg_k, soft_k)``) and the composite as it is then (with the objects below it,
    not yet those above) goes back into that object (``a'_fg_k = lerp(a_fg_k, bl, hard_k)``); the
    background exchange (`BgMode`) then uses the union of the soft masks. One foreground is the
    method's three-stream blend."""
    if not len(a_fgs) == len(softs) == len(hards) >= 1:
        raise ValueError(f"blend_stack: {len(a_fgs)} foregrounds, {len(softs)} soft and {len(hards)} hard masks")
    # torch.lerp(x, y, w) = x + w * (y - x) = y * w + x * (1 - w): one fused op, one new tensor each
    softs = [s.unsqueeze(-1).to(a_bl.dtype) for s in softs]
    bl, fgs = a_bl, []
    for a_fg, soft, hard in zip(a_fgs, softs, hards):
        bl = torch.lerp(bl, a_fg, soft) if switches.blend else bl
        fgs.append(torch.lerp(a_fg, bl, hard.unsqueeze(-1).to(a_fg.dtype)) if switches.fg else a_fg)
    bg = a_bg
    if switches.bg and mode is BgMode.BG_FROM_BL:
        bg = torch.lerp(bl, a_bg, union(softs))
    elif switches.bg and mode is BgMode.BL_FROM_BG:
        bl = torch.lerp(a_bg, bl, union(softs))
    return fgs, bg, bl
