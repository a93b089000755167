"""Transparent VAE nodes: decode a latent to image + alpha, and encode an RGBA image to a latent."""

from __future__ import annotations

import logging

import comfy.utils
import torch
from comfy_api.latest import io

from ..layerfusion_core.layout.latents import stream_inputs
from ..layerfusion_core.layout.streams import Stream
from ..layerfusion_core.transparency.codec import (
    AUGMENTATIONS,
    IDENTITY,
    decode_rgba,
    encoder_input,
    flatten_on_grey,
    latent_fits,
    offset_latent,
    rgba_planes,
    same_aspect,
)
from ..layerfusion_core.transparency.loading import ManagedModule, NotKLAutoencoderError, load_managed, posterior_moments
from ..layerfusion_core.transparency.networks import SIZE_MULTIPLE, LatentOffsetEncoder, TransparentDecoder
from ..layerfusion_core.transparency.variants import BY_LATENT_CHANNELS, FLUX, SDXL, TransparentVariant
from ..layerfusion_core.weights import known_files
from ..layerfusion_core.weights.safetensors_io import WeightFileError
from .common import CATEGORY, node_error, require_finite
from .previews import intermediate_output, rgba_preview

log = logging.getLogger(__name__)

DECODE = "LayerFusion Transparent Decode"
ENCODE = "LayerFusion Transparent Encode"
DECODER_FILE = SDXL.decoder_file
ENCODER_FILE = SDXL.encoder_file
DECODER_FILES = f"{SDXL.decoder_file} for SDXL, {FLUX.decoder_file} for FLUX"
ENCODER_FILES = f"{SDXL.encoder_file} for SDXL, {FLUX.encoder_file} for FLUX"
MASK_TRANSPARENT = "1 = transparent (ComfyUI)"
MASK_OPAQUE = "1 = opaque (alpha)"
STREAMS = ("fg", "bg", "blend", "all")


def _file_input(name: str, default: str, tooltip: str) -> io.Combo.Input:
    options = known_files.list_files(known_files.LAYER_MODEL_FOLDER)
    return io.Combo.Input(name, options=options, default=default if default in options else None, tooltip=tooltip)


def _resolve(node: str, input_name: str, file_name: str) -> str:
    try:
        return known_files.resolve(file_name, (known_files.LAYER_MODEL_FOLDER,))
    except FileNotFoundError as err:
        raise node_error(node, input_name, str(err), "Then choose it here.") from None


def _load(node: str, input_name: str, module_cls: type, file_name: str, files: str) -> ManagedModule:
    try:
        return load_managed(module_cls, _resolve(node, input_name, file_name))
    except WeightFileError as err:
        raise node_error(node, input_name, str(err), f"Choose {files}.") from None


def _latent_mismatch(node: str, input_name: str, channels: int | None, found: str, variant: TransparentVariant,
                     file_input: str, file_name: str) -> ValueError:
    """The error for a latent (or a VAE) of another model family than the transparent VAE file."""
    other = BY_LATENT_CHANNELS.get(channels)
    fix = f"{file_name} is the {variant.name} transparent VAE: connect {variant.base_vae}'s {variant.latent_channels}-channel latents"
    if other is not None and other is not variant:
        other_file = other.decoder_file if file_input == "decoder_name" else other.encoder_file
        fix += f", or choose the {other.name} file ({other_file}) in '{file_input}'"
    return node_error(node, input_name, f"{found}, expected {variant.latent_channels} ({variant.name}, as {file_name})", fix + ".")


class LayerFusionTransparentDecode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="LayerFusionTransparentDecode",
            **intermediate_output(),
            display_name=DECODE,
            category=CATEGORY,
            description=(
                "Decode a transparent-foreground latent to RGBA with LayerDiffuse's transparent VAE decoder (SDXL, or FLUX "
                "with the FLUX decoder file). Give it the latent and the VAE's decode of that latent. Outputs the RGBA image (straight alpha; SaveImage writes "
                "a transparent PNG), its RGB, and the alpha as a MASK."
            ),
            inputs=[
                io.Latent.Input("samples", tooltip="The latent (a LayerFusion batch or a plain one)."),
                io.Image.Input("images", tooltip="The VAE Decode of the same latent (SDXL or FLUX VAE; all its rows, or only the chosen stream's)."),
                _file_input("decoder_name", DECODER_FILE, f"The transparent decoder from models/layer_model ({DECODER_FILES}; "
                                                          "the variant is read from the file's tensors)."),
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
        if samples["samples"].ndim != 4:
            raise node_error(DECODE, "samples", f"has shape {tuple(samples['samples'].shape)}, expected [B, C, h, w] (an image latent)",
                             "Connect the sampler's latent.")
        decoder = _load(DECODE, "decoder_name", TransparentDecoder, decoder_name, DECODER_FILES)
        variant = decoder.variant
        if samples["samples"].shape[1] != variant.latent_channels:
            channels = int(samples["samples"].shape[1])
            raise _latent_mismatch(DECODE, "samples", channels, f"has {channels} latent channels (shape {tuple(samples['samples'].shape)})",
                                   variant, "decoder_name", decoder_name)
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
        variants = AUGMENTATIONS if augment else IDENTITY
        progress = comfy.utils.ProgressBar(pixels.shape[0] * len(variants))
        rgba = decode_rgba(decoder.run(), pixels, None if latent is None else latent.float(), size_multiple=SIZE_MULTIPLE,
                           augmentations=variants, sub_batch=sub_batch_size, on_progress=progress.update,
                           variant=variant)
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
                "the VAE (SDXL's, or FLUX's with the FLUX encoder file) encodes the colour flattened onto 50% grey, and "
                "LayerDiffuse's latent-offset encoder adds the transparency to that posterior."
            ),
            inputs=[
                io.Image.Input("image", tooltip="RGBA image (4 channels), or RGB with a mask."),
                io.Vae.Input("vae", tooltip="The SDXL VAE, or the FLUX VAE (ae.safetensors) with the FLUX encoder file."),
                _file_input("encoder_name", ENCODER_FILE, f"The latent-offset encoder from models/layer_model ({ENCODER_FILES}; "
                                                          "the variant is read from the file's tensors)."),
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
        encoder = _load(ENCODE, "encoder_name", LatentOffsetEncoder, encoder_name, ENCODER_FILES)
        variant = encoder.variant
        channels = getattr(vae, "latent_channels", None)
        if channels != variant.latent_channels:
            raise _latent_mismatch(ENCODE, "vae", channels, f"makes {channels}-channel latents", variant, "encoder_name", encoder_name)
        try:
            mean, std = posterior_moments(vae, flatten_on_grey(rgb, alpha))
        except NotKLAutoencoderError as err:
            raise node_error(ENCODE, "vae", str(err), f"Connect {variant.base_vae}.") from None
        offset = encoder.run()(encoder_input(rgb, alpha, variant))
        return io.NodeOutput({"samples": offset_latent(mean, std, offset, variant)})
