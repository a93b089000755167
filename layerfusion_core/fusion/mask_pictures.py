"""Turning a run's `MaskRecord` into pictures (for `LayerFusion Masks`)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .run import MaskRecord
from .settings import BlockKey

DEFAULT_BLOCK = "structure"  # the block the structure prior is read from (SDXL: output 5 1)
BLOCK_NAMES = ("input", "middle", "output")


def parse_block(text: str, structure_block: BlockKey) -> BlockKey:
    """'output 5 1' (or 'output,5,1') -> ("output", 5, 1); 'structure' (or empty) -> ``structure_block``."""
    if text.strip().lower() in ("", DEFAULT_BLOCK):
        return structure_block
    parts = text.replace(",", " ").split()
    if len(parts) != 3 or parts[0] not in BLOCK_NAMES or not parts[1].isdigit() or not parts[2].isdigit():
        raise ValueError(f"{text!r} is not a block like 'output 5 1' (input|middle|output, block id, transformer index)")
    return parts[0], int(parts[1]), int(parts[2])


def _upscale(maps: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    return F.interpolate(maps.float().unsqueeze(1), size=size, mode="bilinear", align_corners=False).squeeze(1).clamp(0, 1)


def maps(record: MaskRecord | None, block: BlockKey, step: int, d: float, size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Structure prior, soft and hard mask ``[N, H, W]`` of ``block`` at joint-run ``step`` (-1: the
    extraction step; otherwise the nearest recorded step at or after it)."""
    if record is None:
        raise ValueError("nothing recorded yet: no LayerFusion run has finished with this model")
    steps = sorted(s for (key, s) in record.soft if key == block)
    if not steps:
        recorded = sorted({key for key, _ in record.soft})
        raise ValueError(f"no masks recorded for block {block}; recorded blocks: {recorded[:6]}{'...' if len(recorded) > 6 else ''}")
    wanted = record.extraction_step if step < 0 else step
    chosen = next((s for s in steps if s >= (wanted or 0)), steps[-1])
    soft = record.soft[(block, chosen)].float()
    hard = torch.sigmoid(d * (soft - 0.5))
    return _upscale(record.structure, size), _upscale(soft, size), _upscale(hard, size)


def side_by_side(*maps_: torch.Tensor) -> torch.Tensor:
    """``[N, H, W]`` maps -> one grey IMAGE per set with the maps next to each other: ``[N, H, k*W, 3]``."""
    row = torch.cat(maps_, dim=-1)
    return row.unsqueeze(-1).expand(*row.shape, 3).contiguous()
