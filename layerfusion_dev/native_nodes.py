"""Emulated node classes of current ComfyUI's own layer nodes (``comfy_extras/nodes_compositor.py``),
with their ids, inputs and outputs, over the reading and compositing in `native_compositor`.

Never registered in a server: a host that has the real nodes keeps them. The compatibility tests
put them in an in-process node registry; `object_info_for_missing` gives their `/object_info`
entries to tools that write or check the UI file of a workflow using them on a host without them.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from comfy_api.latest import io

from .native_compositor import (
    BLEND_MODES,
    MAX_RESOLUTION,
    canvas_extent,
    compose,
    composite_outputs,
    compositor_input,
    document_canvas,
    document_items,
    expand_item_frames,
    frame_alpha,
    layers_io,
)


class EmulatedImageCompositor(io.ComfyNode):
    """nodes_compositor.py `ImageCompositor` ("Create Layered Image", experimental, an output node):
    ``layers`` (LAYERS) and the editor's saved state ``compositor`` -> IMAGE (RGBA where transparent)
    and MASK (1 = transparent). Mirrors how it reads a stack (`document_items`, `expand_item_frames`,
    `frame_alpha`) and composes it on the items' own placement (the canvas of the document, else the
    placed layers' extent) in linear light. Left out: a saved editor state (refused), the layer
    previews and fingerprints it sends to the frontend, blend modes other than normal, rotation."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="ImageCompositor",
            display_name="Create Layered Image",
            category="image",
            is_experimental=True,
            is_output_node=True,
            inputs=[
                layers_io().Input("layers", tooltip="Layer stack to composite; build it with Add Layer."),
                compositor_input("compositor", "Layered composition saved by the compositor editor."),
            ],
            outputs=[
                io.Image.Output(tooltip="Composited image; RGBA where the composite has transparent areas."),
                io.Mask.Output(tooltip="Transparency of the composite (1 = fully transparent)."),
            ],
        )

    @classmethod
    def execute(cls, layers, compositor=None) -> io.NodeOutput:
        if compositor not in (None, {}, "", "{}"):
            raise NotImplementedError("the emulated Create Layered Image composes the stack's own placement only, "
                                      "not a state saved by the Layer Editor")
        frames = expand_item_frames(document_items(layers))
        if not frames:
            return io.NodeOutput(torch.zeros(1, 64, 64, 3), torch.zeros(1, 64, 64))
        alphas = [frame_alpha(frame["tensor"], frame["mask"]) for frame in frames]
        out = compose(frames, alphas, document_canvas(layers) or canvas_extent(frames))
        return io.NodeOutput(*composite_outputs(out))


class EmulatedAddLayer(io.ComfyNode):
    """nodes_compositor.py `AddLayer` ("Add Layer", experimental): appends one item (its image batch
    becomes that many layers) to the stack it is given, or starts one; keeps the stack's canvas.
    Mirrors the item it writes: the always-present keys (image, type, x, y, z_index) and the others
    only when they differ from their defaults (rotation stored in radians)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        optional = {"optional": True}
        return io.Schema(
            node_id="AddLayer",
            display_name="Add Layer",
            category="image",
            is_experimental=True,
            inputs=[
                layers_io().Input("layers", tooltip="Layer stack to append to.", **optional),
                io.Image.Input("image", tooltip="Layer content; a batch expands to consecutive layers."),
                io.Mask.Input("mask", tooltip="Masked areas (value 1) become transparent, multiplying any alpha.", **optional),
                io.String.Input("name", default="", tooltip="Layer name.", **optional),
                io.Int.Input("x", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, tooltip="Horizontal placement.", **optional),
                io.Int.Input("y", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION, tooltip="Vertical placement.", **optional),
                io.Float.Input("opacity", default=1.0, min=0.0, max=1.0, step=0.01, tooltip="Layer opacity.", **optional),
                io.Combo.Input("blend_mode", options=list(BLEND_MODES), default="normal", tooltip="Blend mode.", **optional),
                io.Float.Input("rotation", default=0.0, min=-360.0, max=360.0, step=1.0, tooltip="Degrees, clockwise.", **optional),
                io.Int.Input("width", default=0, min=0, max=MAX_RESOLUTION, tooltip="0 keeps the native width.", **optional),
                io.Int.Input("height", default=0, min=0, max=MAX_RESOLUTION, tooltip="0 keeps the native height.", **optional),
                io.Int.Input("z_index", default=0, min=-1000, max=1000, tooltip="Stable-sort key.", **optional),
                io.Boolean.Input("flip_h", default=False, tooltip="Flip horizontally.", **optional),
                io.Boolean.Input("flip_v", default=False, tooltip="Flip vertically.", **optional),
            ],
            outputs=[layers_io().Output(tooltip="The layer stack with this layer appended.")],
        )

    @classmethod
    def execute(cls, image, layers=None, mask=None, name: str = "", x: int = 0, y: int = 0, opacity: float = 1.0,
                blend_mode: str = "normal", rotation: float = 0.0, width: int = 0, height: int = 0, z_index: int = 0,
                flip_h: bool = False, flip_v: bool = False) -> io.NodeOutput:
        item: dict[str, Any] = {"image": image, "type": "raster", "x": int(x), "y": int(y), "z_index": int(z_index)}
        extras = {"mask": (mask, mask is not None), "name": (name, bool(name)), "opacity": (float(opacity), opacity != 1.0),
                  "blend_mode": (blend_mode, blend_mode != "normal"), "rotation": (math.radians(rotation), rotation != 0.0),
                  "w": (int(width), width > 0), "h": (int(height), height > 0), "flip_h": (True, flip_h), "flip_v": (True, flip_v)}
        item.update({key: value for key, (value, present) in extras.items() if present})
        previous = layers if isinstance(layers, dict) else None
        document: dict[str, Any] = {"version": 1, "layers": [*(previous.get("layers") or []), item] if previous else [item]}
        canvas = document_canvas(previous)
        if canvas:
            document["canvas"] = canvas
        return io.NodeOutput(document)


EMULATED: list[type[io.ComfyNode]] = [EmulatedImageCompositor, EmulatedAddLayer]


def object_info_for_missing(host_info: dict[str, Any]) -> dict[str, Any]:
    """`/object_info` entries of the emulated nodes whose ids ``host_info`` (a host's) lacks."""
    entries = {}
    for node in EMULATED:
        node_id = node.GET_SCHEMA().node_id
        if node_id not in host_info:
            entries[node_id] = node.GET_NODE_INFO_V1()
    return entries
