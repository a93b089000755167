"""What the patches read off a ComfyUI model: its compute dtype, its UNet's weight shapes and its
transformer blocks as ComfyUI keys their patches."""

from __future__ import annotations

import comfy.model_patcher
import torch

from ..fusion.settings import BlockKey


def compute_dtype(model: comfy.model_patcher.ModelPatcher) -> torch.dtype:
    """The dtype the UNet computes in (its weights', or the manual-cast one for fp8 weights)."""
    dtype = getattr(model.model, "manual_cast_dtype", None) or model.model_dtype() or torch.float32
    return dtype if dtype in (torch.float32, torch.float16, torch.bfloat16) else torch.float16


def unet_shapes(model: comfy.model_patcher.ModelPatcher) -> dict[str, torch.Size]:
    """``diffusion_model.``-prefixed UNet weight shapes as the checkpoint has them: ComfyUI keeps the
    last model's weight patches applied between runs (a padded input conv, say), so a weight it
    has backed up counts with its original shape."""
    shapes = {f"diffusion_model.{k}": v.shape for k, v in model.model.diffusion_model.state_dict().items()}
    for key, saved in model.backup.items():
        if key in shapes:
            shapes[key] = saved.weight.shape
    return shapes


def transformer_keys(model: comfy.model_patcher.ModelPatcher) -> list[BlockKey]:
    """Every transformer block of the UNet as ComfyUI keys its patches, in the order they run."""
    from comfy.ldm.modules.attention import SpatialTransformer

    unet = model.model.diffusion_model
    keys: list[BlockKey] = []
    groups = [("input", list(unet.input_blocks)), ("middle", [unet.middle_block]), ("output", list(unet.output_blocks))]
    for name, blocks in groups:
        for block_id, block in enumerate(blocks):
            for layer in block:
                if isinstance(layer, SpatialTransformer):
                    keys += [(name, block_id, i) for i in range(len(layer.transformer_blocks))]
    return keys


def attention_module(unet: torch.nn.Module, key: BlockKey, kind: str) -> torch.nn.Module:
    """The CrossAttention ``attn1`` or ``attn2`` of the transformer block ComfyUI keys as ``key``."""
    from comfy.ldm.modules.attention import SpatialTransformer

    name, block_id, index = key
    block = unet.middle_block if name == "middle" else (unet.input_blocks if name == "input" else unet.output_blocks)[block_id]
    transformer = next(layer for layer in block if isinstance(layer, SpatialTransformer))
    return getattr(transformer.transformer_blocks[index], kind)
