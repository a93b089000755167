"""`LayerFusion Background`: the user's own photo as the background stream, the object generated
into it in the same run."""

from __future__ import annotations

import torch
from comfy_api.latest import io

from ..layerfusion_core.fusion.photo import PhotoHold
from ..layerfusion_core.layout.latents import LATENT_SCALE, LAYERED_KEY, is_layered, with_photo
from ..layerfusion_core.patching.layerfusion import FusionModelError, hold_photo
from .common import CATEGORY, node_error, require_finite

BACKGROUND = "LayerFusion Background"
DEFAULTS = PhotoHold()


def _pixels(shape: torch.Size) -> str:
    return f"{shape[-1] * LATENT_SCALE}x{shape[-2] * LATENT_SCALE}"


def _check_photo(latent: torch.Tensor, photo: torch.Tensor, sets: int) -> None:
    if photo.ndim != 4 or photo.shape[1] != latent.shape[1]:
        raise node_error(BACKGROUND, "photo", f"has shape {tuple(photo.shape)}, the latent {latent.shape[1]} channels per row",
                         "Encode the photo with VAE Encode and the same checkpoint's VAE.")
    if photo.shape[-2:] != latent.shape[-2:]:
        raise node_error(BACKGROUND, "photo", f"is {_pixels(photo.shape)} pixels, the latent {_pixels(latent.shape)}",
                         f"Scale the image to {_pixels(latent.shape)} (Upscale Image) before VAE Encode, or give LayerFusion "
                         f"Empty Latent the photo's size, {_pixels(photo.shape)}.")
    if photo.shape[0] not in (1, sets):
        raise node_error(BACKGROUND, "photo", f"has {photo.shape[0]} images, the latent {sets} layered set(s)",
                         "Give one photo (used for every set) or one per set.")


def _region(latent: torch.Tensor, mask: torch.Tensor | None, sets: int) -> torch.Tensor | None:
    if mask is None:
        return None
    mask = mask[None] if mask.ndim == 2 else mask
    size = (latent.shape[-2] * LATENT_SCALE, latent.shape[-1] * LATENT_SCALE)
    if mask.ndim != 3 or tuple(mask.shape[-2:]) != size:
        shown = f"{mask.shape[-1]}x{mask.shape[-2]}" if mask.ndim == 3 else f"shape {tuple(mask.shape)}"
        raise node_error(BACKGROUND, "mask", f"is {shown}, the photo {size[1]}x{size[0]}",
                         "Draw the mask on the photo itself (e.g. Load Image's mask) or scale it to the photo's size.")
    if mask.shape[0] not in (1, sets):
        raise node_error(BACKGROUND, "mask", f"has {mask.shape[0]} masks, the latent {sets} layered set(s)",
                         "Give one mask (used for every set) or one per set.")
    require_finite(BACKGROUND, "mask", mask)
    return mask


def _photo_mask(latent: torch.Tensor, noise_mask: torch.Tensor | None) -> torch.Tensor | None:
    """The photo latent's own noise mask (VAE Encode for Inpainting, Set Latent Noise Mask: ``[B, 1, H, W]``
    of any size, as ComfyUI scales it) as a MASK of the photo's pixel size."""
    if noise_mask is None:
        return None
    mask = noise_mask.reshape(-1, 1, *noise_mask.shape[-2:]).float()
    size = (latent.shape[-2] * LATENT_SCALE, latent.shape[-1] * LATENT_SCALE)
    return torch.nn.functional.interpolate(mask, size=size, mode="bilinear", align_corners=False)[:, 0]


class LayerFusionBackground(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionBackground",
            display_name=BACKGROUND,
            category=CATEGORY,
            description=(
                "Your own photo as the background: the background stream is held to the photo (ComfyUI's inpainting mask), "
                "the foreground is generated as a transparent object and the composite puts it into the photo with its "
                "shadow and light, in one run. Connect both outputs to the sampler."
            ),
            inputs=[
                io.Model.Input("model", tooltip="The model from LayerFusion Apply (it is not changed; a copy is returned)."),
                io.Latent.Input("latent", tooltip="The layered latent from LayerFusion Empty Latent, the photo's size."),
                io.Latent.Input("photo", tooltip="The photo through VAE Encode (same checkpoint's VAE): one for every set, "
                                                 "or one per set."),
                io.Boolean.Input("hold_composite", default=True,
                                 tooltip="On: the composite stays the photo except in a band around the object (where its "
                                         "shadow and light go). Off: the composite is generated freely from the photo."),
                io.Float.Input("hold_from", default=DEFAULTS.start, min=0.0, max=1.0, step=0.01,
                               tooltip="The hold starts at this fraction of the schedule (0: from the first step)."),
                io.Int.Input("dilate_px", default=DEFAULTS.dilate_px, min=0, max=2048, step=8,
                             tooltip="The band: the object's hard mask grown by this many pixels. Larger leaves room for a "
                                     "longer shadow; the photo outside it is kept exactly."),
                io.Int.Input("feather_px", default=DEFAULTS.feather_px, min=0, max=1024, step=8,
                             tooltip="The band's edge fades in over this many pixels (inside the grown mask)."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional: where the composite may change at all (1 = may change, ComfyUI's inpainting "
                                      "convention), the photo's size. Outside it the photo is kept for the whole run. "
                                      "Without it: the photo latent's own noise mask if it has one, else everywhere."),
            ],
            outputs=[
                io.Model.Output("model_out", display_name="model", tooltip="The model, holding the composite to the photo."),
                io.Latent.Output("latent_out", display_name="latent",
                                 tooltip="The layered latent: background and composite rows from the photo, with the "
                                         "inpainting mask that keeps the background rows the photo."),
            ],
        )

    @classmethod
    def execute(cls, model, latent: dict, photo: dict, hold_composite: bool, hold_from: float, dilate_px: int,
                feather_px: int, mask: torch.Tensor | None = None) -> io.NodeOutput:
        samples = latent["samples"]
        if not is_layered(latent):
            raise node_error(BACKGROUND, "latent", f"is not a LayerFusion batch ({samples.shape[0]} rows, no layered sets)",
                             "Connect LayerFusion Empty Latent here, and the photo's VAE Encode to 'photo'.")
        require_finite(BACKGROUND, "photo", photo["samples"])
        sets = latent[LAYERED_KEY]
        _check_photo(samples, photo["samples"], sets)
        region = _region(samples, mask if mask is not None else _photo_mask(samples, photo.get("noise_mask")), sets)
        hold = PhotoHold(hold_from, dilate_px, feather_px) if hold_composite else None
        try:
            held = hold_photo(model, hold)
        except FusionModelError as err:
            raise node_error(BACKGROUND, err.input_name, str(err), err.fix) from None
        return io.NodeOutput(held, with_photo(latent, photo["samples"], region))
