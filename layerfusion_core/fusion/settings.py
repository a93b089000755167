"""What `LayerFusion Apply` sets: `FusionSettings` (plain Python, no ComfyUI)."""

from __future__ import annotations

import dataclasses
import enum

from .blending import BgMode, BlendSwitches
from .photo import PhotoHold

BlockKey = tuple[str, int, int]  # ("input" | "middle" | "output", block id, transformer index)


class PriorMode(str, enum.Enum):
    PRIOR_PASS = "prior_pass"  # the FG stream alone runs to the extraction step first (the paper's figure)
    IN_RUN = "in_run"  # extracted inside the joint run; no blending before it


@dataclasses.dataclass(frozen=True)
class FusionSettings:
    d: float = 10.0
    prior_at: float = 0.8  # extract at the first step whose timestep is <= prior_at * T
    prior_mode: PriorMode = PriorMode.PRIOR_PASS
    blend_start: float = 0.0  # fractions of the schedule (ComfyUI percent: 0 = first step)
    blend_end: float = 1.0
    bg_mode: BgMode = BgMode.BG_FROM_BL
    switches: BlendSwitches = BlendSwitches()
    structure_block: BlockKey = ("output", 5, 1)  # the last self-attention block (SDXL)
    norm_quantile: float = 1.0  # the soft mask's norm() tops out at this quantile of s' * c (1: min-max)
    hold: PhotoHold | None = None  # the composite held to the photo outside the band (LayerFusion Background)
