"""Preview pictures a node sends to the frontend (temp PNGs under keys the pack's web extension
reads, so the frontend's own image preview does not show them a second time)."""

from __future__ import annotations

import dataclasses
import secrets

import torch
from comfy_api.latest import io, ui

RGBA_KEY = "layerfusion_rgba"  # RGBA previews, drawn over a checkerboard by web/layerfusion.js
MASKS_KEY = "layerfusion_masks"  # {"soft": ..., "blend": ...} pairs, the mask drawn over the blend image
FILES_KEY = "layerfusion_files"  # files a node saved (Save Layers), listed as links


def intermediate_output() -> dict:
    """Schema fields for a node whose previews (UI output) should be sent again when its result comes
    from ComfyUI's cache: ``has_intermediate_output`` where the host's io.Schema has it (0.19 and
    later), nothing on older hosts."""
    fields = {f.name for f in dataclasses.fields(io.Schema)}
    return {"has_intermediate_output": True} if "has_intermediate_output" in fields else {}


def temp_pngs(images_bhwc: torch.Tensor) -> list[dict]:
    """Save ``[B, H, W, 3 or 4]`` images in [0, 1] as temp PNGs; their /view entries."""
    prefix = f"LayerFusion_preview_{secrets.token_hex(4)}"
    return [dict(saved) for saved in ui.ImageSaveHelper.save_images(images_bhwc, prefix, io.FolderType.temp, None, compress_level=1)]


def rgba_preview(rgba_bhwc: torch.Tensor) -> dict:
    return {RGBA_KEY: temp_pngs(rgba_bhwc)}


def masks_preview(soft_bhw: torch.Tensor, blend_bhwc: torch.Tensor | None) -> dict:
    masks = temp_pngs(soft_bhw.unsqueeze(-1).expand(*soft_bhw.shape, 3))
    blends = temp_pngs(blend_bhwc[..., :3]) if blend_bhwc is not None else [None] * len(masks)
    return {MASKS_KEY: [{"soft": m, "blend": b} for m, b in zip(masks, blends)]}
