"""Transparent VAE nodes: decode a latent to image + alpha, and encode an RGBA image to a latent."""

from __future__ import annotations

import logging

import comfy.utils
import torch
from comfy_api.latest import io

from ..layerfusion_core import weight_files
from ..layerfusion_core.latents import stream_inputs
from ..layerfusion_core.safetensors_io import WeightFileError
from ..layerfusion_core.streams import Stream
from ..layerfusion_core.transparency import (
    AUGMENTATIONS, IDENTITY, decode_rgba, flatten_on_grey, latent_fits, pad_rgb, rgba_planes, same_aspect,
)
from ..layerfusion_core.transparent_vae import SIZE_MULTIPLE, LatentOffsetEncoder, TransparentDecoder
from ..layerfusion_core.vae_models import load_managed, posterior_moments
from .common import CATEGORY, node_error, require_finite
from .previews import rgba_preview

log = logging.getLogger(__name__)

DECODE = "LayerFusion Transparent Decode"
ENCODE = "LayerFusion Transparent Encode"
DECODER_FILE = "vae_transparent_decoder.safetensors"
ENCODER_FILE = "vae_transparent_encoder.safetensors"
MASK_TRANSPARENT = "1 = transparent (ComfyUI)"
MASK_OPAQUE = "1 = opaque (alpha)"
STREAMS = ("fg", "bg", "blend", "all")
LATENT_CHANNELS = 4  # SDXL


def _file_input(name: str, default: str, tooltip: str) -> io.Combo.Input:
    options = weight_files.list_files(weight_files.LAYER_MODEL_FOLDER)
    return io.Combo.Input(name, options=options, default=default if default in options else None, tooltip=tooltip)


def _resolve(node: str, input_name: str, file_name: str) -> str:
    try:
        return weight_files.resolve(file_name, (weight_files.LAYER_MODEL_FOLDER,))
    except FileNotFoundError as err:
        raise node_error(node, input_name, str(err), "Then choose it here.") from None


class LayerFusionTransparentDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTransparentDecode",
            display_name=DECODE,
            category=CATEGORY,
            description=(
                "Decode a transparent-foreground latent to RGBA with LayerDiffuse's transparent VAE decoder. Give it the "
                "latent and the SDXL VAE's decode of that latent. Outputs the RGBA image (straight alpha; SaveImage writes "
                "a transparent PNG), its RGB, and the alpha as a MASK."
            ),
            inputs=[
                io.Latent.Input("samples", tooltip="The latent (a LayerFusion batch or a plain one)."),
                io.Image.Input("images", tooltip="The SDXL VAE Decode of the same latent (all its rows, or only the chosen stream's)."),
                _file_input("decoder_name", DECODER_FILE, f"The transparent decoder from models/layer_model ({DECODER_FILE})."),
                io.Combo.Input("stream", options=list(STREAMS), default="fg",
                               tooltip="For a LayerFusion batch: which stream's rows to decode (fg: the transparent foreground). "
                                       "A plain batch is decoded whole."),
                io.Boolean.Input("augment", default=True,
                                 tooltip="Decode 8 flipped/rotated copies and take the per-pixel median: cleaner alpha, 8x the work."),
                io.Int.Input("sub_batch_size", default=8, min=1, max=64,
                             tooltip="How many decoder passes run at once. Lower it if memory runs out."),
                io.Combo.Input("mask_polarity", options=[MASK_TRANSPARENT, MASK_OPAQUE], default=MASK_TRANSPARENT,
                               tooltip="The MASK output: '1 = transparent' is ComfyUI's convention (LoadImage, JoinImageWithAlpha); "
                                       "'1 = opaque' is the alpha itself (what the older LayerDiffuse pack returns)."),
            ],
            outputs=[
                io.Image.Output("rgba", display_name="RGBA", tooltip="RGBA image [B, H, W, 4], straight alpha."),
                io.Image.Output("rgb", display_name="RGB", tooltip="The foreground colour without alpha."),
                io.Mask.Output("mask", display_name="MASK", tooltip="The alpha as a mask, with the chosen polarity."),
            ],
        )

    @classmethod
    def execute(cls, samples: dict, images: torch.Tensor, decoder_name: str, stream: str, augment: bool,
                sub_batch_size: int, mask_polarity: str) -> io.NodeOutput:
        require_finite(DECODE, "samples", samples["samples"])
        require_finite(DECODE, "images", images)
        if samples["samples"].ndim != 4 or samples["samples"].shape[1] != LATENT_CHANNELS:
            raise node_error(DECODE, "samples", f"has shape {tuple(samples['samples'].shape)}, expected [B, {LATENT_CHANNELS}, h, w]",
                             "The transparent decoder takes SDXL latents (4 channels); connect the SDXL sampler's latent.")
        try:
            latent, images = stream_inputs(samples, images, None if stream == "all" else Stream[stream.upper()])
        except ValueError as err:
            raise node_error(DECODE, "images", str(err), "Connect the VAE Decode of the same latent.") from None
        pixels = images[..., :3].movedim(-1, 1).float()
        if not latent_fits(latent, pixels):
            if not same_aspect(latent, pixels):
                raise node_error(DECODE, "images", f"are {pixels.shape[-1]}x{pixels.shape[-2]} pixels, the latent's decode would be "
                                 f"{8 * latent.shape[-1]}x{8 * latent.shape[-2]} (another shape, not an upscale)",
                                 "Connect the VAE Decode of the same latent (an upscale of it also works).")
            log.info("%s: latent %s does not match images %s (upscaled?): decoding from pixels alone",
                     DECODE, tuple(latent.shape), tuple(pixels.shape))
            latent = None
        try:
            decoder = load_managed(TransparentDecoder, _resolve(DECODE, "decoder_name", decoder_name))
        except WeightFileError as err:
            raise node_error(DECODE, "decoder_name", str(err), "Choose vae_transparent_decoder.safetensors.") from None
        variants = AUGMENTATIONS if augment else IDENTITY
        progress = comfy.utils.ProgressBar(pixels.shape[0] * len(variants))
        rgba = decode_rgba(decoder.run(), pixels, None if latent is None else latent.float(), size_multiple=SIZE_MULTIPLE,
                           augmentations=variants, sub_batch=sub_batch_size, on_progress=progress.update)
        rgba = rgba.movedim(1, -1)
        alpha = rgba[..., 3]
        mask = 1.0 - alpha if mask_polarity == MASK_TRANSPARENT else alpha
        return io.NodeOutput(rgba, rgba[..., :3].contiguous(), mask, ui=rgba_preview(rgba))


class LayerFusionTransparentEncode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTransparentEncode",
            display_name=ENCODE,
            category=CATEGORY,
            description=(
                "Encode a transparent image (RGBA, or IMAGE + MASK) to a latent for img2img with the transparent foreground: "
                "the SDXL VAE encodes the colour flattened onto 50% grey, and LayerDiffuse's latent-offset encoder adds "
                "the transparency to that posterior."
            ),
            inputs=[
                io.Image.Input("image", tooltip="RGBA image (4 channels), or RGB with a mask."),
                io.Vae.Input("vae", tooltip="The SDXL VAE."),
                _file_input("encoder_name", ENCODER_FILE, f"The latent-offset encoder from models/layer_model ({ENCODER_FILE})."),
                io.Mask.Input("mask", optional=True,
                              tooltip="Optional transparency in ComfyUI's convention (1 = transparent, as LoadImage gives); "
                                      "it replaces the image's own alpha."),
            ],
            outputs=[io.Latent.Output(tooltip="The latent, ready for a KSampler with denoise below 1.")],
        )

    @classmethod
    def execute(cls, image: torch.Tensor, vae, encoder_name: str, mask: torch.Tensor | None = None) -> io.NodeOutput:
        require_finite(ENCODE, "image", image)
        require_finite(ENCODE, "mask", mask)
        try:
            rgb, alpha = rgba_planes(image, mask)
        except ValueError as err:
            raise node_error(ENCODE, "mask", str(err), "Match the mask batch to the image batch.") from None
        if alpha is None:
            log.info("%s: the image has no alpha and no mask was given: encoding it as fully opaque", ENCODE)
            alpha = torch.ones_like(rgb[:, :1])
        h, w = rgb.shape[-2] // 8 * 8, rgb.shape[-1] // 8 * 8
        if (h, w) != tuple(rgb.shape[-2:]):
            log.info("%s: cropping %s to %dx%d (multiples of 8)", ENCODE, tuple(rgb.shape[-2:]), h, w)
            rgb, alpha = rgb[..., :h, :w], alpha[..., :h, :w]
        try:
            encoder = load_managed(LatentOffsetEncoder, _resolve(ENCODE, "encoder_name", encoder_name))
        except WeightFileError as err:
            raise node_error(ENCODE, "encoder_name", str(err), "Choose vae_transparent_encoder.safetensors.") from None
        try:
            mean, std = posterior_moments(vae, flatten_on_grey(rgb, alpha))
        except TypeError as err:
            raise node_error(ENCODE, "vae", str(err), "Connect the SDXL checkpoint's VAE.") from None
        offset = encoder.run()(torch.cat([alpha, pad_rgb(rgb, alpha)], dim=1))
        return io.NodeOutput({"samples": mean + std * offset})
