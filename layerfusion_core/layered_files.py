"""Layered files from LayerFusion's layers, and straight-alpha compositing (plain numpy and torch).

- PSD through psd-tools: an RGBA document whose layers keep their straight alpha as Photoshop's
  transparency channel, and whose merged image (what viewers without layer support show) is the
  visible stack.
- OpenRaster (.ora), written here (the format is a zip: ``mimetype`` first and uncompressed,
  ``stack.xml`` listing the layers top first, one PNG per layer, ``mergedimage.png`` and a
  thumbnail), the open format GIMP and Krita read.
- `place` and `composite_over`: the foreground moved and scaled over a background, with straight
  alpha in and out (the resampling itself runs on premultiplied colour, so no dark fringe);
  `recompose`: every object of a set so, bottom first.

A layered set may hold K objects (foregrounds): a foreground batch has K x N rows, set by set (set n's
objects are rows n*K ... n*K + K - 1, the first at the bottom: `set_rows`). One object is the layer
``foreground``; K of them are ``foreground 1`` ... ``foreground K`` (`object_names`).

Layers are given bottom first, as editors stack them. A layer has a blend mode (`light_shadow.Blend`:
normal, multiply, addition), written as Photoshop's blend mode key and OpenRaster's composite-op,
and applied by `merged` as the editors do on 8-bit sRGB values.
"""

from __future__ import annotations

import dataclasses
import io
import logging
import re
import zipfile
from pathlib import Path
from xml.sax.saxutils import quoteattr

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import light_shadow
from .light_shadow import NORMAL, Blend

log = logging.getLogger(__name__)
ORA_MIMETYPE = "image/openraster"
THUMBNAIL_SIDE = 256
FORMATS = ("psd", "ora")


@dataclasses.dataclass(frozen=True)
class Layer:
    """One layer: ``pixels`` ``[H, W, 4]`` uint8 with straight alpha, blended by ``blend``."""

    name: str
    pixels: np.ndarray
    visible: bool = True
    blend: Blend = NORMAL

    def __post_init__(self) -> None:
        if self.pixels.dtype != np.uint8 or self.pixels.ndim != 3 or self.pixels.shape[2] != 4:
            raise ValueError(f"layer {self.name!r}: expected [H, W, 4] uint8 pixels, got {self.pixels.dtype} {self.pixels.shape}")


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """``[H, W, C]`` floats in [0, 1] as uint8 (rounded, clamped)."""
    return (image.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).cpu().numpy()


def opaque(pixels: np.ndarray) -> np.ndarray:
    """``[H, W, 3 or 4]`` uint8 as RGBA (an opaque alpha added to RGB)."""
    if pixels.shape[2] == 4:
        return pixels
    return np.concatenate([pixels, np.full((*pixels.shape[:2], 1), 255, np.uint8)], axis=2)


SEPARABLE = {  # a blend mode's B(backdrop, source) per channel, on sRGB values (as the editors blend 8-bit images)
    "normal": lambda under, top: top,
    "multiply": lambda under, top: under * top,
    "add": lambda under, top: (under + top).clamp(max=1.0),
}


def merged(layers: list[Layer]) -> np.ndarray:
    """The visible layers composited bottom to top (straight alpha, each in its blend mode: the
    source colour becomes ``(1 - ab) * Cs + ab * B(Cb, Cs)``, then goes over), uint8 RGBA."""
    height, width = layers[0].pixels.shape[:2]
    out = torch.zeros(height, width, 4)
    for layer in layers:
        if layer.visible:
            top = torch.from_numpy(layer.pixels).float() / 255.0
            if layer.blend.name != NORMAL.name:
                under = out[..., 3:]
                mixed = (1.0 - under) * top[..., :3] + under * SEPARABLE[layer.blend.name](out[..., :3], top[..., :3])
                top = torch.cat([mixed, top[..., 3:]], dim=-1)
            out = composite_over(top[None], out[None])[0]
    return to_uint8(out)


def write_psd(path: str | Path, layers: list[Layer], flat: np.ndarray | None = None) -> None:
    """A PSD (RGBA, 8 bits) with ``layers`` (bottom first) and the visible stack (``flat``, made
    here when not given) as its merged image."""
    from psd_tools import PSDImage
    from psd_tools.api.layers import PixelLayer
    from psd_tools.constants import BlendMode

    document = PSDImage.frompil(Image.fromarray(merged(layers) if flat is None else flat, "RGBA"))
    for layer in layers:
        pixel_layer = PixelLayer.frompil(Image.fromarray(layer.pixels, "RGBA"), document, layer.name)
        pixel_layer.visible = layer.visible
        pixel_layer.blend_mode = BlendMode(layer.blend.psd_key)
        document.append(pixel_layer)
    document.save(str(path))


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA" if pixels.shape[2] == 4 else "RGB").save(buffer, format="PNG", compress_level=4)
    return buffer.getvalue()


def _file_stem(index: int, name: str) -> str:
    return f"{index:02d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', name).strip('_') or 'layer'}"


def write_ora(path: str | Path, layers: list[Layer], flat: np.ndarray | None = None) -> None:
    """An OpenRaster file with ``layers`` (bottom first), its merged image (``flat``, made here when
    not given) and thumbnail."""
    height, width = layers[0].pixels.shape[:2]
    sources = [f"data/{_file_stem(i, layer.name)}.png" for i, layer in enumerate(layers)]
    entries = "".join(
        f'    <layer name={quoteattr(layer.name)} src={quoteattr(src)} x="0" y="0" opacity="1.0" '
        f'visibility="{"visible" if layer.visible else "hidden"}" composite-op={quoteattr(layer.blend.ora_op)}/>\n'
        for layer, src in reversed(list(zip(layers, sources)))  # stack.xml lists the top layer first
    )
    stack = (f'<?xml version="1.0" encoding="UTF-8"?>\n<image version="0.0.3" w="{width}" h="{height}">\n'
             f"  <stack>\n{entries}  </stack>\n</image>\n")
    flat = merged(layers) if flat is None else flat
    thumbnail = Image.fromarray(flat, "RGBA")
    thumbnail.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr(zipfile.ZipInfo("mimetype"), ORA_MIMETYPE, compress_type=zipfile.ZIP_STORED)
        archive.writestr("stack.xml", stack, compress_type=zipfile.ZIP_DEFLATED)
        for layer, src in zip(layers, sources):
            archive.writestr(src, _png(layer.pixels), compress_type=zipfile.ZIP_STORED)
        archive.writestr("mergedimage.png", _png(flat), compress_type=zipfile.ZIP_STORED)
        archive.writestr("Thumbnails/thumbnail.png", _png(np.asarray(thumbnail)), compress_type=zipfile.ZIP_STORED)


WRITERS = {"psd": write_psd, "ora": write_ora}


def object_names(count: int, name: str = "foreground") -> list[str]:
    """The layer names of a set's ``count`` objects (or their masks: ``name`` "mask"), bottom first:
    ``name`` alone for one, ``name 1`` ... ``name K`` for several."""
    return [name] if count == 1 else [f"{name} {index}" for index in range(1, count + 1)]


def set_rows(batch: torch.Tensor, foregrounds: int, index: int) -> torch.Tensor:
    """Set ``index``'s rows ``[K, ...]`` of a set-major batch ``[K*N, ...]`` (``foregrounds`` = K):
    rows ``index*K`` ... ``index*K + K - 1``, the bottom object first."""
    return batch[index * foregrounds:(index + 1) * foregrounds]


def set_layers(foreground: torch.Tensor, background: torch.Tensor, composite: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, light_and_shadow: bool = False) -> list[Layer]:
    """One layered set's layers, bottom first: ``background``, with ``light_and_shadow`` the
    ``shadow`` (Multiply) and ``light`` (Addition) layers that take the background to what the
    composite shows around the objects (`light_shadow`, on sRGB values as the editors blend them),
    the objects (``foreground``, or ``foreground 1`` ... ``foreground K``), ``composite`` (hidden)
    and the masks (hidden, grey: white = 1; ``mask``, or ``mask 1`` ... for several).

    ``foreground`` ``[H, W, 4]`` (straight alpha), or ``[K, H, W, 4]``: the set's K objects bottom
    first; ``background`` and ``composite`` ``[H, W, 3 or 4]`` (the light and shadow read their colour
    only), ``mask`` ``[H, W]`` or ``[M, H, W]`` (one per object); one size (the caller checks).
    """
    objects = foreground[None] if foreground.ndim == 3 else foreground
    layers = [Layer("background", opaque(to_uint8(background)))]
    if light_and_shadow:
        if composite is None:
            raise ValueError("light_and_shadow needs the composite")
        shadow, light, reachable = light_shadow.light_and_shadow(list(objects), background[..., :3], composite[..., :3])
        layers += [Layer(light_shadow.SHADOW, to_uint8(shadow), blend=light_shadow.MULTIPLY),
                   Layer(light_shadow.LIGHT, to_uint8(light), blend=light_shadow.ADD)]
        log_unreachable(list(objects), reachable)
    layers += [Layer(name, to_uint8(layer)) for name, layer in zip(object_names(len(objects)), objects)]
    if composite is not None:
        layers.append(Layer("composite", opaque(to_uint8(composite)), visible=False))
    if mask is not None:
        masks = mask[None] if mask.ndim == 2 else mask
        layers += [Layer(name, opaque(to_uint8(grey[..., None].expand(*grey.shape, 3))), visible=False)
                   for name, grey in zip(object_names(len(masks), "mask"), masks)]
    return layers


def log_unreachable(foreground: light_shadow.Objects, reachable: torch.Tensor) -> None:
    """Say where no layer below the objects (``foreground``: one ``[..., H, W, 4]``, or several bottom
    first) can give the composite back (``reachable`` ``[..., H, W]`` False where they show through)."""
    shows = light_shadow.shows_through(foreground)
    missed = int((shows & ~reachable).sum())
    if missed:
        log.info("light and shadow: the composite cannot be reached below the foreground at %d of %d pixels where "
                 "no foreground is opaque (it differs from the foreground where the foreground is nearly opaque)",
                 missed, int(shows.sum()))


# ---- compositing ---------------------------------------------------------------------------------
def composite_over(top: torch.Tensor, bottom: torch.Tensor) -> torch.Tensor:
    """``top`` ``[B, H, W, 4]`` (straight alpha) over ``bottom`` ``[B, H, W, 3 or 4]``: the result
    has ``bottom``'s channels (RGB over an opaque background; RGBA with the union's alpha)."""
    alpha = top[..., 3:]
    if bottom.shape[-1] == 3:
        return top[..., :3] * alpha + bottom * (1.0 - alpha)
    under = bottom[..., 3:] * (1.0 - alpha)
    out_alpha = alpha + under
    colour = (top[..., :3] * alpha + bottom[..., :3] * under) / out_alpha.clamp_min(1e-12)
    return torch.cat([torch.where(out_alpha > 0, colour, torch.zeros_like(colour)), out_alpha], dim=-1)


def place(foreground: torch.Tensor, height: int, width: int, x: int, y: int, scale: float) -> torch.Tensor:
    """``foreground`` ``[B, h, w, 4]`` scaled by ``scale`` with its top-left corner at (``x``, ``y``)
    on a transparent ``height`` x ``width`` canvas; straight alpha in and out."""
    batch, h, w, _ = foreground.shape
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    fg = foreground.movedim(-1, 1).float()
    if (new_h, new_w) != (h, w):
        premultiplied = torch.cat([fg[:, :3] * fg[:, 3:], fg[:, 3:]], dim=1)
        resized = F.interpolate(premultiplied, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=True)
        resized = resized.clamp(0, 1)
        alpha = resized[:, 3:]
        colour = torch.where(alpha > 0, resized[:, :3] / alpha.clamp_min(1e-12), torch.zeros_like(resized[:, :3]))
        fg = torch.cat([colour.clamp(0, 1), alpha], dim=1)
    canvas = fg.new_zeros(batch, 4, height, width)
    top, left = max(0, y), max(0, x)
    bottom, right = min(height, y + new_h), min(width, x + new_w)
    if bottom > top and right > left:
        canvas[:, :, top:bottom, left:right] = fg[:, :, top - y:bottom - y, left - x:right - x]
    return canvas.movedim(1, -1)


def recompose(foreground: torch.Tensor, background: torch.Tensor, x: int, y: int, scale: float,
              foregrounds: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Each set's objects placed (`place`: the same ``x``, ``y`` and ``scale`` for all) over its
    background, bottom first: ``(image [N, H, W, C], alpha [N, H, W])``, the image with the
    background's channels, ``alpha`` the placed objects' union.

    ``foreground`` ``[K*N, h, w, 4]`` (straight alpha, set-major: `set_rows`; ``foregrounds`` = K),
    ``background`` ``[N, H, W, 3 or 4]``.
    """
    height, width = background.shape[1:3]
    placed = place(foreground, height, width, x, y, scale)
    image, alpha = background.float(), placed[0::foregrounds, ..., 3]
    for index in range(foregrounds):
        layer = placed[index::foregrounds]
        image = composite_over(layer, image)
        if index:
            alpha = layer[..., 3] + (1.0 - layer[..., 3]) * alpha
    return image, alpha
