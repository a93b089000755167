"""ComfyUI's own LAYERS value from one LayerFusion layered set (plain torch).

LAYERS is the layer stack that current ComfyUI's Add Layer builds and Create Layered Image (and its
Layer Editor) reads: ``comfy_api/latest/_io.py`` `Layers` types it, ``comfy_extras/nodes_compositor.py``
builds and reads it. A dict ``{"version": 1, "canvas": (width, height), "layers": [item, ...]}``;
each item ``{"type": "raster", "image": [B, H, W, 3 or 4], "name", "x", "y", "z_index", "visible",
...}``. The reader stable-sorts the items by ``z_index``, turns each image batch into that many
consecutive layers, and reads a 4-channel image's last channel as straight alpha (multiplied by
``1 - mask`` where an item has a ``mask``: ComfyUI's MASK, 1 = transparent).

What is built here, bottom first (the names and order of LayerFusion Save Layers' files):
``background``, ``foreground`` (its straight alpha as the image's fourth channel, no mask),
``composite`` (hidden) and ``mask`` (hidden, grey: white = 1). Every item has ``z_index`` 0, so the
list order is the stack and a layer that Add Layer appends (``z_index`` 0 by default) lands on top.
A set of K objects (the foreground batch K x N rows, set by set, bottom first) has ``foreground 1``
... ``foreground K`` in their place, and its masks (which follow the foreground's rows) ``mask 1`` ...
``mask K``, as in Save Layers' files.

With light and shadow, ``shadow`` and ``light`` go between the background and the foreground. A LAYERS
item can carry a blend mode: its ``blend_mode`` key (what Add Layer's blend_mode input writes), which
Create Layered Image reads into its layer state and applies (``comfy_extras/compositor_blend.py``;
the key is left out for "normal", as Add Layer does). So the two are ``"multiply"`` and
``"linear-dodge"`` items, worked out in linear light (`light_shadow.LINEAR`): Create Layered Image
blends both modes, and "normal", in linear light, so its flattening gives back the composite where
the foreground is not opaque. (Its plain [background, foreground] stack does not: "normal" in linear
light is not the sRGB "over" the composite was made with.)
"""

from __future__ import annotations

import dataclasses

import torch

from . import light_shadow
from .layered_files import log_unreachable, object_names
from .light_shadow import NORMAL, Blend

LAYERS_TYPE = "LAYERS"
LAYERS_VERSION = 1
BACKGROUND, FOREGROUND, COMPOSITE, MASK = "background", "foreground", "composite", "mask"


@dataclasses.dataclass(frozen=True)
class StackLayer:
    """One layer of a set: ``image`` ``[1, H, W, 3 or 4]`` (straight alpha when 4), blended by ``blend``."""

    name: str
    image: torch.Tensor
    visible: bool = True
    blend: Blend = NORMAL


def _frame(batch: torch.Tensor, index: int) -> torch.Tensor:
    """Row ``index`` of ``batch`` (``[B, ...]``) as a batch of one; a single row serves every index."""
    row = index if batch.shape[0] > 1 else 0
    return batch[row:row + 1].contiguous()


def set_layers(foreground: torch.Tensor, background: torch.Tensor, index: int, composite: torch.Tensor | None = None,
               mask: torch.Tensor | None = None, light_and_shadow: bool = False, foregrounds: int = 1) -> list[StackLayer]:
    """The layers of set ``index``, bottom first; with ``light_and_shadow``, the ``shadow`` and
    ``light`` layers (Create Layered Image's multiply and linear-dodge, in linear light) between the
    background and the objects.

    ``foreground`` ``[K*N, H, W, 4]`` (straight alpha; ``foregrounds`` = K objects per set, set by set,
    the bottom one first), ``background`` and ``composite`` ``[N or 1, H, W, 3 or 4]`` (the light and
    shadow read their colour only), ``mask`` ``[K*N or 1, H, W]`` (following the foreground's rows);
    all of one size (the caller checks).
    """
    rows = [index * foregrounds + k for k in range(foregrounds)]
    objects = [_frame(foreground, row) for row in rows]
    layers = [StackLayer(BACKGROUND, _frame(background, index))]
    if light_and_shadow:
        if composite is None:
            raise ValueError("light_and_shadow needs the composite")
        comp = _frame(composite, index)
        shadow, light, reachable = light_shadow.light_and_shadow(objects, layers[0].image[..., :3], comp[..., :3], light_shadow.LINEAR)
        layers += [StackLayer(light_shadow.SHADOW, shadow, blend=light_shadow.MULTIPLY),
                   StackLayer(light_shadow.LIGHT, light, blend=light_shadow.ADD)]
        log_unreachable(objects, reachable)
    layers += [StackLayer(name, image) for name, image in zip(object_names(foregrounds, FOREGROUND), objects)]
    if composite is not None:
        layers.append(StackLayer(COMPOSITE, _frame(composite, index), visible=False))
    if mask is not None:
        layers += [StackLayer(name, _frame(mask, row)[..., None].expand(-1, -1, -1, 3).contiguous(), visible=False)
                   for name, row in zip(object_names(foregrounds, MASK), rows)]
    return layers


def layers_document(layers: list[StackLayer]) -> dict:
    """The LAYERS value of ``layers`` (bottom first) on a canvas of their size, each at the origin."""
    height, width = layers[0].image.shape[1:3]
    items = [
        {"type": "raster", "image": layer.image, "name": layer.name, "x": 0, "y": 0, "z_index": 0,
         "visible": layer.visible, **({} if layer.blend == NORMAL else {"blend_mode": layer.blend.comfy})}
        for layer in layers
    ]
    return {"version": LAYERS_VERSION, "canvas": (int(width), int(height)), "layers": items}


def layers_batch(layers: list[StackLayer]) -> torch.Tensor:
    """The layers as one IMAGE batch ``[N, H, W, 4]``, bottom first: RGB layers get an opaque alpha."""
    frames = []
    for layer in layers:
        image = layer.image.float()
        if image.shape[-1] == 3:
            image = torch.cat([image, torch.ones_like(image[..., :1])], dim=-1)
        frames.append(image)
    return torch.cat(frames, dim=0)
