"""Layered files and recomposition: `LayerFusion Save Layers` (PSD / OpenRaster into ComfyUI's
output folder) and `LayerFusion Recompose` (the foreground moved and scaled over the background).

A layered set may hold K objects (``foregrounds``): the foreground batch then has K x N rows, set by
set, each set's objects bottom first; the background and composite one row per set (or one for all),
a mask the foreground's rows."""

from __future__ import annotations

import os

import comfy.utils
import folder_paths
import torch
from comfy_api.latest import io

from ..layerfusion_core import layered_files
from ..layerfusion_core.layout.streams import MAX_FOREGROUNDS
from .common import CATEGORY, MAX_RESOLUTION, node_error, require_finite
from .previews import FILES_KEY, temp_pngs
from .transparent import MASK_OPAQUE, MASK_TRANSPARENT

SAVE = "LayerFusion Save Layers"
RECOMPOSE = "LayerFusion Recompose"
FORMAT_CHOICES = {"psd": ("psd",), "ora": ("ora",), "psd and ora": ("psd", "ora")}
RGBA_FIX = ("Connect the RGBA output of LayerFusion Transparent Decode, or join an image with its alpha "
            "(ComfyUI's Join Image with Alpha).")


def _require_images(node: str, name: str, image: torch.Tensor | None, channels: tuple[int, ...]) -> None:
    if image is None:
        return
    if image.ndim != 4 or image.shape[-1] not in channels:
        shape = "x".join(str(s) for s in image.shape)
        wanted = " or ".join(str(c) for c in channels)
        fix = RGBA_FIX if channels == (4,) else "Connect an IMAGE."
        raise node_error(node, name, f"has shape {shape}, expected [batch, height, width, {wanted}] "
                                     f"({'RGBA: colour and alpha' if channels == (4,) else 'RGB or RGBA'})", fix)
    if image.shape[0] == 0:
        raise node_error(node, name, "is an empty batch (0 images)", "Check the node that produced it.")
    require_finite(node, name, image)


def _batch_of(node: str, name: str, image: torch.Tensor, batch: int, foregrounds: int = 1) -> torch.Tensor:
    """``image`` with ``batch`` rows: a single image is used for every one. ``foregrounds`` > 1: the
    rows are the foreground's sets (``batch`` of them, ``foregrounds`` foreground rows each)."""
    if image.shape[0] == batch:
        return image
    if image.shape[0] == 1:
        return image.expand(batch, *image.shape[1:])
    if foregrounds == 1:
        raise node_error(node, name, f"has {image.shape[0]} images, the foreground has {batch}",
                         "Give as many as the foreground, or one for all.")
    raise node_error(node, name, f"has {image.shape[0]} images, the foreground has {batch} sets ({batch * foregrounds} "
                                 f"images, {foregrounds} per set)", "Give one per set, or one for all.")


def set_count(node: str, foreground: torch.Tensor, foregrounds: int) -> int:
    """How many layered sets ``foreground`` ``[K*N, H, W, 4]`` holds with ``foregrounds`` (K) objects
    each; refuses a K out of range and a batch that is not K x N rows."""
    if not 1 <= foregrounds <= MAX_FOREGROUNDS:
        raise node_error(node, "foregrounds", f"is {foregrounds}, expected 1 to {MAX_FOREGROUNDS}",
                         "Set it to the number of objects (foregrounds) in each layered set.")
    rows = foreground.shape[0]
    if rows % foregrounds:
        raise node_error(node, "foreground", f"has {rows} images, expected foregrounds x sets = {foregrounds} x N: the "
                                             f"{foregrounds} objects of each set, set by set, the bottom one first",
                         f"Set foregrounds to the number of objects in each set (a run with K foregrounds decodes to K "
                         f"images per set), or give {foregrounds} images per set.")
    return rows // foregrounds


def _same_size(node: str, name: str, image: torch.Tensor, height: int, width: int) -> None:
    if tuple(image.shape[1:3]) != (height, width):
        raise node_error(node, name, f"is {image.shape[2]}x{image.shape[1]}, the foreground is {width}x{height}",
                         "Layers of one layered set share one canvas: resize it (or use LayerFusion Recompose to place the "
                         "foreground on a larger background first).")


def layered_set(node: str, foreground: torch.Tensor, background: torch.Tensor, composite: torch.Tensor | None,
                mask: torch.Tensor | None, light_and_shadow: bool = False,
                foregrounds: int = 1) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Check a layered set's inputs (``node`` names them in errors), ``foreground`` ``[K*N, H, W, 4]``
    with ``foregrounds`` (K) objects per set: the background and composite with one row per set
    (``[N, ...]``), the mask with the foreground's rows (``[K*N, H, W]``); a single one is used for
    every set (row)."""
    if light_and_shadow and composite is None:
        raise node_error(node, "light_and_shadow", "is on, but no composite is connected: the light and shadow are what "
                                                   "the composite shows around the object", "Connect the composite (the "
                                                   "harmonised image), or turn light_and_shadow off.")
    _require_images(node, "foreground", foreground, (4,))
    _require_images(node, "background", background, (3, 4))
    _require_images(node, "composite", composite, (3, 4))
    batch, height, width, _ = foreground.shape
    sets = set_count(node, foreground, foregrounds)
    background = _batch_of(node, "background", background, sets, foregrounds)
    _same_size(node, "background", background, height, width)
    if composite is not None:
        composite = _batch_of(node, "composite", composite, sets, foregrounds)
        _same_size(node, "composite", composite, height, width)
    if mask is not None:
        mask = mask[None] if mask.ndim == 2 else mask
        if mask.ndim != 3 or mask.shape[0] == 0:
            raise node_error(node, "mask", f"has shape {tuple(mask.shape)}, expected [batch, height, width]", "Connect a MASK.")
        require_finite(node, "mask", mask)
        mask = _batch_of(node, "mask", mask, batch)
        _same_size(node, "mask", mask, height, width)
    return background, composite, mask


def foreground_input() -> io.Image.Input:
    return io.Image.Input("foreground", tooltip="The transparent foreground: RGBA (LayerFusion Transparent Decode's RGBA). "
                                                "With foregrounds = K: K images per set, set by set, the bottom object first.")


def background_input() -> io.Image.Input:
    return io.Image.Input("background", tooltip="The background layer (RGB or RGBA), the foreground's size. One image "
                                                "is used for every set.")


def foregrounds_input(what_happens: str, per_set: str = "the background and composite") -> io.Int.Input:
    return io.Int.Input(
        "foregrounds", default=1, min=1, max=MAX_FOREGROUNDS, optional=True,
        tooltip="K: the objects (foregrounds) in each layered set. The foreground batch is K images per set, set by set, "
                "each set's bottom object first (set n's objects are images n*K to n*K + K - 1: as Transparent Decode "
                f"gives a run with K foregrounds); {per_set} one per set, or one for all. {what_happens} "
                "1: one object per set, as before.")


def light_and_shadow_input(blended_by: str) -> io.Boolean.Input:
    return io.Boolean.Input(
        "light_and_shadow", default=False, optional=True,
        tooltip="Needs the composite. Adds what the object did to its surroundings (the composite minus the foreground "
                "over the background: its shadow, the light it reflects) as two layers between the background and the "
                f"foreground (below all the objects, when a set has several): 'shadow' in Multiply and 'light' in Addition "
                f"(Linear Dodge), {blended_by}, so that flattening the layers gives back the composite. Move the "
                "foreground and keep, move or hide its shadow. "
                "Off: the layers are as without it.")


class LayerFusionSaveLayers(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionSaveLayers",
            display_name=SAVE,
            category=CATEGORY,
            is_output_node=True,
            description=(
                "Save each layered set as one layered file in ComfyUI's output folder: PSD (Photoshop, Photopea, "
                "Krita, GIMP) or OpenRaster .ora (GIMP, Krita). Layers, bottom to top: background, foreground (with "
                "its transparency, straight alpha kept exactly), composite (hidden), and the mask (hidden) if given. "
                "With light_and_shadow, the object's shadow and reflected light go between background and foreground, "
                "so the flattened file is the composite and stays editable. With foregrounds = K, each set's K objects "
                "are the layers 'foreground 1' (bottom) to 'foreground K', above the light and shadow."
            ),
            inputs=[
                foreground_input(),
                background_input(),
                io.Image.Input("composite", optional=True,
                               tooltip="The harmonised composite (the blend stream), saved as a hidden layer."),
                io.Mask.Input("mask", optional=True, tooltip="A mask (e.g. LayerFusion Masks' soft mask), saved as a "
                                                             "hidden grey layer (white = 1). One per foreground image, "
                                                             "or one for all."),
                io.Combo.Input("format", options=list(FORMAT_CHOICES), default="psd",
                               tooltip="psd: Photoshop document. ora: OpenRaster. psd and ora: both files per set."),
                io.String.Input("filename_prefix", default="LayerFusion/layers",
                                tooltip="Where in the output folder, and the file names' start (as in Save Image; "
                                        "%date% style placeholders work too)."),
                light_and_shadow_input("blended on the sRGB values as Photoshop, GIMP and Krita do"),
                foregrounds_input("Each object is its own layer, 'foreground 1' (bottom) to 'foreground K', and so is "
                                  "each mask ('mask 1' to 'mask K': the mask follows the foreground's images)."),
            ],
            outputs=[],
        )

    @classmethod
    def execute(cls, foreground, background, format: str, filename_prefix: str, composite=None, mask=None,
                light_and_shadow: bool = False, foregrounds: int = 1) -> io.NodeOutput:
        if format not in FORMAT_CHOICES:
            raise node_error(SAVE, "format", f"is {format!r}", f"Choose one of {', '.join(FORMAT_CHOICES)}.")
        background, composite, mask = layered_set(SAVE, foreground, background, composite, mask, light_and_shadow, foregrounds)
        sets, height, width = foreground.shape[0] // foregrounds, *foreground.shape[1:3]

        output_dir = folder_paths.get_output_directory()
        folder, name, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, output_dir, width, height)
        files, flats = [], []
        progress = comfy.utils.ProgressBar(sets)
        for index in range(sets):
            layers = layered_files.set_layers(layered_files.set_rows(foreground, foregrounds, index), background[index],
                                              None if composite is None else composite[index],
                                              None if mask is None else layered_files.set_rows(mask, foregrounds, index),
                                              light_and_shadow)
            flat = layered_files.merged(layers)  # once per set: the files' merged image and the preview
            for kind in FORMAT_CHOICES[format]:
                file_name = f"{name}_{counter + index:05}_.{kind}"
                layered_files.WRITERS[kind](os.path.join(folder, file_name), layers, flat)
                files.append({"filename": file_name, "subfolder": subfolder, "type": "output", "format": kind})
            flats.append(torch.from_numpy(flat).float() / 255.0)
            progress.update(1)
        return io.NodeOutput(ui={"images": temp_pngs(torch.stack(flats)), FILES_KEY: files})


class LayerFusionRecompose(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionRecompose",
            display_name=RECOMPOSE,
            category=CATEGORY,
            description=(
                "Place the transparent foreground over a background at an offset and a scale (straight-alpha "
                "compositing): move or resize the subject after generating it. Outputs the new composite and the "
                "placed foreground's alpha as a MASK. With foregrounds = K, all K objects of a set move together."
            ),
            inputs=[
                foreground_input(),
                io.Image.Input("background", tooltip="The background (RGB, or RGBA for a transparent result); sets the "
                                                     "canvas size. One per set, or one image for every set."),
                io.Int.Input("x", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION,
                             tooltip="Pixels from the background's left edge to the scaled foreground's left edge."),
                io.Int.Input("y", default=0, min=-MAX_RESOLUTION, max=MAX_RESOLUTION,
                             tooltip="Pixels from the background's top edge to the scaled foreground's top edge."),
                io.Float.Input("scale", default=1.0, min=0.05, max=8.0, step=0.05,
                               tooltip="The foreground's size factor (1 = as generated)."),
                io.Combo.Input("mask_polarity", options=[MASK_TRANSPARENT, MASK_OPAQUE], default=MASK_TRANSPARENT,
                               tooltip="1 = transparent: ComfyUI's convention (as Load Image gives). 1 = opaque: the alpha itself."),
                foregrounds_input("All K objects of a set are placed at the same x, y and scale, over that set's "
                                  "background, bottom first (they keep their places relative to each other); IMAGE and "
                                  "MASK have one image per set, the MASK where any of them is.", "the background"),
            ],
            outputs=[
                io.Image.Output("image", display_name="IMAGE", tooltip="The foreground over the background."),
                io.Mask.Output("mask", display_name="MASK", tooltip="Where the placed foreground is, with the chosen polarity."),
            ],
        )

    @classmethod
    def execute(cls, foreground, background, x: int, y: int, scale: float, mask_polarity: str,
                foregrounds: int = 1) -> io.NodeOutput:
        _require_images(RECOMPOSE, "foreground", foreground, (4,))
        _require_images(RECOMPOSE, "background", background, (3, 4))
        sets = set_count(RECOMPOSE, foreground, foregrounds)
        background = _batch_of(RECOMPOSE, "background", background, sets, foregrounds)
        image, alpha = layered_files.recompose(foreground, background, x, y, scale, foregrounds)
        return io.NodeOutput(image, 1.0 - alpha if mask_polarity == MASK_TRANSPARENT else alpha)
