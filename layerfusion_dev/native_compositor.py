"""Emulations of current ComfyUI's own layer nodes, for a host that lacks them (the pinned 0.3.75).

Written from current ComfyUI's ``comfy_extras/nodes_compositor.py`` (`ImageCompositor`, "Create
Layered Image"; `AddLayer`, "Add Layer") and ``comfy_extras/compositor_blend.py`` (the blend maths),
and named after them. What each mirrors, and what it leaves out, is in its docstring. The
compatibility tests run LayerFusion's LAYERS through them; `layerfusion_dev.build_workflows` takes
their `/object_info` entries where the host has no such node, to write the UI file of a workflow
that ends in Create Layered Image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from comfy_api.latest import io
from PIL import Image

MAX_LAYERS = 50  # nodes_compositor.MAX_LAYERS
MAX_RESOLUTION = 16384
OPAQUE_EPSILON = 1e-3  # nodes_compositor.OPAQUE_EPSILON: an output this close to opaque everywhere is RGB
BLEND_MODES = ("normal", "multiply", "screen", "overlay", "darken", "lighten", "color-dodge", "color-burn", "hard-light",
               "soft-light", "difference", "exclusion", "linear-dodge", "linear-burn", "vivid-light", "pin-light",
               "linear-light", "hard-mix", "subtract", "divide", "grain-extract", "grain-merge", "hue", "saturation",
               "color", "luminosity")  # compositor_blend._LAYER_MODES, in its order


def layers_io() -> type[io.ComfyTypeIO]:
    return getattr(io, "Layers", None) or io.Custom("LAYERS")


def compositor_input(name: str, tooltip: str) -> io.Input:
    """The editor's saved state: `io.Compositor` (a socketless widget, default ``{}``) where the host has it."""
    if hasattr(io, "Compositor"):
        return io.Compositor.Input(name, tooltip=tooltip)
    return io.Custom("COMPOSITOR").Input(name, tooltip=tooltip, extra_dict={"socketless": True, "default": {}})


# ---- reading a LAYERS value (nodes_compositor: document_items, document_canvas, expand_item_frames, frame_alpha)
def _int(value: Any, default: int) -> int:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def document_items(doc: Any) -> list[dict]:
    """The items holding a tensor image, stable-sorted by ``z_index`` (missing: 0)."""
    if not isinstance(doc, dict):
        return []
    items = [item for item in (doc.get("layers") or []) if isinstance(item, dict) and isinstance(item.get("image"), torch.Tensor)]
    return sorted(items, key=lambda item: _int(item.get("z_index"), 0))


def document_canvas(doc: Any) -> tuple[int, int] | None:
    canvas = doc.get("canvas") if isinstance(doc, dict) else None
    if not isinstance(canvas, (tuple, list)) or len(canvas) != 2:
        return None
    width, height = _int(canvas[0], 0), _int(canvas[1], 0)
    return (width, height) if width > 0 and height > 0 else None


def _positive(value: Any, default: int) -> int:
    """A size the item gives (a positive number), else ``default``."""
    size = _int(value, 0)
    return size if size > 0 else default


def _mask_row(mask: Any, index: int) -> torch.Tensor | None:
    """The mask for image ``index`` of an item: a one-row mask serves every image, a missing row none."""
    if not isinstance(mask, torch.Tensor) or (mask.shape[0] != 1 and index >= mask.shape[0]):
        return None
    return mask[:1] if mask.shape[0] == 1 else mask[index:index + 1]


def _frame(item: dict, index: int) -> dict:
    """Image ``index`` of ``item`` as one layer: its placement (the image's own size where the item
    gives none), opacity, blend mode, visibility and flips, with the reader's defaults."""
    image = item["image"]
    rotation = item.get("rotation")
    real_rotation = isinstance(rotation, (int, float)) and not isinstance(rotation, bool)
    name = item.get("name")
    return {
        "tensor": image[index:index + 1], "mask": _mask_row(item.get("mask"), index),
        "name": name if isinstance(name, str) else None,
        "x": _int(item.get("x"), 0), "y": _int(item.get("y"), 0),
        "w": _positive(item.get("w"), int(image.shape[2])), "h": _positive(item.get("h"), int(image.shape[1])),
        "rotation": float(rotation) if real_rotation else 0.0,
        "opacity": item.get("opacity", 1.0), "blend": item.get("blend_mode", "normal"), "visible": item.get("visible", True),
        "flip_h": bool(item.get("flip_h", False)), "flip_v": bool(item.get("flip_v", False)),
    }


def expand_item_frames(items: list[dict]) -> list[dict]:
    """Every image of every item as a layer of its own, in order (a batch of B images: B layers)."""
    frames = [_frame(item, index) for item in items for index in range(item["image"].shape[0])]
    if len(frames) > MAX_LAYERS:
        raise ValueError(f"a stack of {len(frames)} layers is more than the compositor's {MAX_LAYERS}")
    return frames


def frame_alpha(tensor: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor | None:
    """A frame's alpha ``[1, H, W]``: its fourth channel, times ``1 - mask`` (the mask resized bilinearly to it)."""
    alpha = tensor[:1, :, :, 3] if tensor.shape[-1] == 4 else None
    if mask is None:
        return alpha
    m = mask[:1].float()
    if tuple(m.shape[1:]) != tuple(tensor.shape[1:3]):
        m = torch.nn.functional.interpolate(m[:, None], size=tuple(tensor.shape[1:3]), mode="bilinear")[:, 0]
    keep = (1.0 - m).clamp(0.0, 1.0)
    return keep if alpha is None else alpha * keep


# ---- compositing (nodes_compositor: composite_from_state on the items' own placement; compositor_blend) ----
def srgb_to_linear(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.04045, c / 12.92, ((np.maximum(c, 0.0) + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(c: np.ndarray) -> np.ndarray:
    c = np.asarray(c, dtype=np.float32)
    return np.where(c <= 0.0031308, 12.92 * c, 1.055 * np.maximum(c, 0.0) ** (1.0 / 2.4) - 0.055).astype(np.float32)


def canvas_extent(frames: list[dict]) -> tuple[int, int]:
    """The best-effort canvas without a document canvas: the placed frames' right and bottom edges."""
    right = bottom = 1
    for f in frames:
        cos, sin = math.cos(f["rotation"]), math.sin(f["rotation"])
        cx, cy, hw, hh = f["x"] + f["w"] / 2, f["y"] + f["h"] / 2, f["w"] / 2, f["h"] / 2
        xs = [cx + dx * cos - dy * sin for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]
        ys = [cy + dx * sin + dy * cos for dx, dy in ((-hw, -hh), (hw, -hh), (hw, hh), (-hw, hh))]
        left, top = math.floor(min(xs)), math.floor(min(ys))
        right, bottom = max(right, left + max(1, math.ceil(max(xs)) - left)), max(bottom, top + max(1, math.ceil(max(ys)) - top))
    return right, bottom


def _bitmap(frame: dict, alpha: torch.Tensor | None) -> np.ndarray:
    """The frame as the editor draws it: 8-bit RGBA, flipped and resized; floats ``[h, w, 4]`` in [0, 1]."""
    rgb8 = np.clip(np.rint(frame["tensor"][0, :, :, :3].detach().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    a8 = np.full(rgb8.shape[:2], 255, np.uint8) if alpha is None else \
        np.clip(np.rint(alpha[0].detach().cpu().numpy() * 255.0), 0, 255).astype(np.uint8)
    image = Image.fromarray(np.dstack([rgb8, a8]), "RGBA")
    if frame["flip_h"]:
        image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    if frame["flip_v"]:
        image = image.transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    size = (max(1, round(frame["w"])), max(1, round(frame["h"])))
    if image.size != size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return np.asarray(image, dtype=np.float32) / 255.0


def _normal_union(backdrop: np.ndarray, layer: np.ndarray, opacity: float) -> np.ndarray:
    """``layer`` over ``backdrop`` (both ``[h, w, 4]``, linear colour, straight alpha): blend mode
    "normal", composite "union" (compositor_blend.blend_composite with _composite_union)."""
    below_a, layer_a = backdrop[..., 3], layer[..., 3] * opacity
    out_a = layer_a + (1.0 - layer_a) * below_a
    share = np.where(out_a != 0, layer_a / np.where(out_a != 0, out_a, 1.0), 0.0)
    mixed = backdrop[..., :3] + share[..., None] * (layer[..., :3] - backdrop[..., :3])
    untouched = (layer_a == 0) | (out_a == 0)
    rgb = np.where(untouched[..., None], backdrop[..., :3], np.where((below_a == 0)[..., None], layer[..., :3], mixed))
    return np.concatenate([rgb, out_a[..., None]], axis=-1)


def compose(frames: list[dict], alphas: list[torch.Tensor | None], canvas: tuple[int, int]) -> torch.Tensor:
    """The visible frames, bottom first, on a transparent canvas (the hidden default background)
    in linear light; ``[1, H, W, 4]`` sRGB with alpha. Emulated: blend mode "normal" without
    rotation (what LayerFusion's stacks and Add Layer's defaults use); others are refused."""
    width, height = canvas
    out = np.zeros((height, width, 4), dtype=np.float32)
    for frame, alpha in zip(frames, alphas):
        if not bool(frame["visible"]):
            continue
        blend = frame["blend"] if isinstance(frame["blend"], str) else "normal"
        if blend != "normal" or frame["rotation"] != 0:
            raise NotImplementedError(f"the emulation composes blend mode 'normal' without rotation, not {blend!r} at {frame['rotation']}")
        opacity = frame["opacity"] if isinstance(frame["opacity"], (int, float)) else 1.0
        layer = _bitmap(frame, alpha)
        layer[..., :3] = srgb_to_linear(layer[..., :3])
        x0, y0 = max(frame["x"], 0), max(frame["y"], 0)
        x1, y1 = min(frame["x"] + layer.shape[1], width), min(frame["y"] + layer.shape[0], height)
        if x0 < x1 and y0 < y1:
            part = layer[y0 - frame["y"]:y1 - frame["y"], x0 - frame["x"]:x1 - frame["x"]]
            out[y0:y1, x0:x1] = _normal_union(out[y0:y1, x0:x1], part, min(max(float(opacity), 0.0), 1.0))
    rgba = np.concatenate([linear_to_srgb(np.clip(out[..., :3], 0.0, 1.0)), np.clip(out[..., 3:], 0.0, 1.0)], axis=-1)
    return torch.from_numpy(rgba.astype(np.float32))[None]


def composite_outputs(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IMAGE and MASK (1 = transparent): RGB and zeros where the result is opaque everywhere."""
    alpha = out[..., 3]
    if bool((alpha >= 1.0 - OPAQUE_EPSILON).all()):
        return out[..., :3], torch.zeros_like(alpha)
    return out, (1.0 - alpha).clamp(0.0, 1.0)
