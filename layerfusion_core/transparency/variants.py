"""The transparent VAE variants LayerDiffuse publishes, as data: SDXL's and FLUX's.

Both share one decoder architecture ("UNet1024") and one encoder architecture; they differ in
the latent's channel count, the decoder's output channel order, the encoder's input order and the
scale of the encoder's offset. A file's variant is read from its tensor shapes (`detect_variant`),
never from its name.

Latent space: both decoders take the base VAE's *raw* latent (what its encoder gives, before any
scale or shift). ComfyUI's ``LATENT["samples"]`` is that raw space for both SDXL and FLUX: the
sampler applies the model's latent format (FLUX: ``(x - 0.1159) * 0.3611`` in, the inverse out)
on its own, so the nodes pass LATENT samples through unchanged.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

RGBA = "rgba"  # the order the nodes output, and the letters the orders below are spelled with

DECODER_LATENT_KEY = "latent_conv_in.weight"  # [64, latent channels, 1, 1]
ENCODER_LAST_KEY = "blocks.16.weight"  # [latent channels, 256, 3, 3]


@dataclasses.dataclass(frozen=True)
class TransparentVariant:
    name: str  # as users know it: "SDXL", "FLUX"
    latent_channels: int  # the base VAE's latent channels
    decoder_output_order: str  # the decoder's 4 output channels, e.g. "argb"
    encoder_input_order: str  # the encoder's 4 input planes (RGB is the padded colour), e.g. "argb"
    offset_scale: float  # latent = mean + std * offset_scale * encoder output
    base_vae: str  # the VAE whose decode (pixels) and latents go with it
    decoder_file: str  # the safetensors file names this pack lists for it
    encoder_file: str

    @property
    def to_rgba(self) -> list[int]:
        """Indices that reorder the decoder's output channels to R, G, B, A."""
        return [self.decoder_output_order.index(c) for c in RGBA]

    def encoder_planes(self) -> list[str]:
        """The encoder's input planes in order: "rgb" (the padded colour, 3 planes) and "a"."""
        order = self.encoder_input_order
        return ["a", "rgb"] if order.index("a") < order.index("r") else ["rgb", "a"]


SDXL = TransparentVariant(
    name="SDXL", latent_channels=4, decoder_output_order="argb", encoder_input_order="argb", offset_scale=1.0,
    base_vae="the SDXL VAE", decoder_file="vae_transparent_decoder.safetensors",
    encoder_file="vae_transparent_encoder.safetensors",
)
FLUX = TransparentVariant(
    name="FLUX", latent_channels=16, decoder_output_order="rgba", encoder_input_order="rgba", offset_scale=300.0,
    base_vae="the FLUX VAE (ae.safetensors)", decoder_file="vae_transparent_decoder_flux.safetensors",
    encoder_file="vae_transparent_encoder_flux.safetensors",
)
VARIANTS: tuple[TransparentVariant, ...] = (SDXL, FLUX)
BY_LATENT_CHANNELS: dict[int, TransparentVariant] = {v.latent_channels: v for v in VARIANTS}


class UnknownVariantError(ValueError):
    """Tensors whose shapes fit no known variant (the message says what was found)."""


def known_channels() -> str:
    return ", ".join(f"{v.latent_channels} ({v.name})" for v in VARIANTS)


def detect_variant(shapes: Mapping[str, Sequence[int]]) -> TransparentVariant:
    """The variant of a decoder's or an encoder's tensors (name -> shape), from the latent
    channels of ``latent_conv_in.weight`` (decoder: its input channels) or ``blocks.16.weight``
    (encoder: its output channels). Raises `UnknownVariantError` when neither gives a known count."""
    if DECODER_LATENT_KEY in shapes:
        key, channels = DECODER_LATENT_KEY, _dim(shapes[DECODER_LATENT_KEY], 1)
    elif ENCODER_LAST_KEY in shapes:
        key, channels = ENCODER_LAST_KEY, _dim(shapes[ENCODER_LAST_KEY], 0)
    else:
        raise UnknownVariantError(f"has neither {DECODER_LATENT_KEY} (a decoder) nor {ENCODER_LAST_KEY} (an encoder)")
    variant = BY_LATENT_CHANNELS.get(channels)
    if variant is None:
        raise UnknownVariantError(f"{key} has shape {list(shapes[key])}: {channels} latent channels, known: {known_channels()}")
    return variant


def _dim(shape: Sequence[int], index: int) -> int | None:
    return int(shape[index]) if len(shape) > index else None
