"""Loading LayerDiffuse's transparent decoder and encoder, run under ComfyUI's model management.

Each file is read (safetensors only), its variant (SDXL or FLUX) read from its tensor shapes, loaded
strictly by its own tensor names into a module of that variant built with `comfy.ops`, and wrapped
in a ModelPatcher, so ComfyUI loads it to the VAE device and offloads it like any model; fp16 where
the device supports it.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import torch

from ..weights.known_files import KNOWN_BY_NAME, KnownFile
from ..weights.safetensors_io import WeightFileError, read_safetensors
from .networks import LatentOffsetEncoder, TransparentDecoder
from .variants import (
    DECODER_LATENT_KEY,
    ENCODER_LAST_KEY,
    SDXL,
    VARIANTS,
    TransparentVariant,
    UnknownVariantError,
    detect_variant,
)

VARIANT_KEY = {TransparentDecoder: DECODER_LATENT_KEY, LatentOffsetEncoder: ENCODER_LAST_KEY}  # the tensor each file's variant is read from


def expected_file(module_cls: type[torch.nn.Module], variant: TransparentVariant) -> KnownFile:
    """The published file a `TransparentDecoder` or `LatentOffsetEncoder` of ``variant`` loads."""
    return KNOWN_BY_NAME[variant.decoder_file if module_cls is TransparentDecoder else variant.encoder_file]


def _expected_text(module_cls: type[torch.nn.Module]) -> str:
    files = [expected_file(module_cls, v) for v in VARIANTS]
    return "; expected LayerDiffuse's " + " or ".join(f"{f.name} ({f.arch.upper()}, {f.url})" for f in files)


def module_variant(module_cls: type[torch.nn.Module], name: str, shapes: dict[str, tuple[int, ...]]) -> TransparentVariant:
    """The variant of a file's tensors for ``module_cls`` (from one tensor's shape, never the
    file name). A file without that tensor gets SDXL's layout, which the strict check then refuses."""
    key = VARIANT_KEY[module_cls]
    if key not in shapes:
        return SDXL
    try:
        return detect_variant({key: shapes[key]})
    except UnknownVariantError as err:
        raise WeightFileError(f"{name}: {err}{_expected_text(module_cls)}") from None


@dataclasses.dataclass(frozen=True)
class ManagedModule:
    patcher: object  # comfy.model_patcher.ModelPatcher
    dtype: torch.dtype

    @property
    def variant(self) -> TransparentVariant:
        """SDXL or FLUX: what the loaded file's tensor shapes said."""
        return self.patcher.model.variant

    @property
    def module(self) -> torch.nn.Module:
        return self.patcher.model

    @property
    def device(self) -> torch.device:
        return self.patcher.load_device

    def run(self) -> Callable[..., torch.Tensor]:
        """Load onto the device (through ComfyUI) and return a function that runs the module on
        tensors from anywhere, returning float32 results on the same device as its first input."""
        import comfy.model_management

        comfy.model_management.load_models_gpu([self.patcher])

        def call(*inputs: torch.Tensor) -> torch.Tensor:
            with torch.inference_mode():
                out = self.module(*(x.to(device=self.device, dtype=self.dtype) for x in inputs))
            return out.to(device=inputs[0].device, dtype=torch.float32)

        return call


def layout_problem(wanted: dict[str, tuple[int, ...]], got: dict[str, tuple[int, ...]], what: str) -> str | None:
    """What is wrong with tensors ``got`` (name -> shape) against the layout ``wanted``, or None."""
    missing, unexpected = sorted(set(wanted) - set(got)), sorted(set(got) - set(wanted))
    wrong = [k for k in wanted if k in got and tuple(wanted[k]) != tuple(got[k])]
    if not (missing or unexpected or wrong):
        return None
    if not set(wanted) & set(got):
        return f"none of its {len(got)} tensors is a {what} tensor (e.g. {next(iter(got), '?')!r})"
    if wrong:
        return f"{len(wrong)} tensors have the wrong shape (e.g. {wrong[0]}: {got[wrong[0]]}, expected {wanted[wrong[0]]})"
    return f"{len(missing)} tensors are missing (e.g. {missing[:1]}) and {len(unexpected)} are unexpected (e.g. {unexpected[:1]})"


def expected_shapes(module_cls: type[torch.nn.Module], variant: TransparentVariant) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape of ``module_cls`` for ``variant`` (built on the meta device: no memory)."""
    with torch.device("meta"):
        module = module_cls(variant=variant)
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def _build(module_cls: type[torch.nn.Module], path: str) -> torch.nn.Module:
    name = os.path.basename(path)
    tensors = read_safetensors(path)
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    variant = module_variant(module_cls, name, got)
    import comfy.ops

    # The file is checked against the layout itself, not against a freshly built module: with current
    # ComfyUI's dynamic VRAM, comfy.ops layers hold no weight until they are loaded.
    problem = layout_problem(expected_shapes(module_cls, variant), got, expected_file(module_cls, variant).kind.value)
    if problem is not None:
        raise WeightFileError(f"{name}: {problem}{_expected_text(module_cls)}")
    module = module_cls(ops=comfy.ops.disable_weight_init, variant=variant)
    module.load_state_dict(tensors, strict=True)
    return module.eval()


def load_managed(module_cls: type[torch.nn.Module], path: str) -> ManagedModule:
    """`TransparentDecoder` or `LatentOffsetEncoder` from ``path``, under ComfyUI's management."""
    import comfy.model_management
    import comfy.model_patcher

    module = _build(module_cls, path)
    device = comfy.model_management.vae_device()
    dtype = comfy.model_management.vae_dtype(device, [torch.float16, torch.float32])
    module.to(dtype)
    patcher = comfy.model_patcher.ModelPatcher(
        module, load_device=device, offload_device=comfy.model_management.vae_offload_device()
    )
    return ManagedModule(patcher, dtype)


class NotKLAutoencoderError(ValueError):
    """The VAE given has no Gaussian posterior (not SDXL's or FLUX's KL autoencoder)."""


def posterior_moments(vae, pixels_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation ``[B, C, H/8, W/8]`` of ComfyUI VAE's posterior for RGB in [0, 1]
    (raw latent space: no scale or shift).

    Needs a KL autoencoder: SDXL's (ComfyUI's AutoencoderKL: encoder then quant_conv) or FLUX's
    (AutoencodingEngine with a Gaussian regulariser: the encoder gives the moments directly);
    ComfyUI's own `VAE.encode` returns only their mode."""
    import comfy.model_management

    model = getattr(vae, "first_stage_model", None)
    regulariser = type(getattr(model, "regularization", None)).__name__
    if model is None or not hasattr(model, "encoder") or not (hasattr(model, "quant_conv") or regulariser == "DiagonalGaussianRegularizer"):
        raise NotKLAutoencoderError("expected an SDXL or FLUX VAE (a KL autoencoder); this VAE has no Gaussian posterior to offset")
    comfy.model_management.load_models_gpu([vae.patcher])
    with torch.inference_mode():
        x = vae.process_input(pixels_bchw).to(device=vae.device, dtype=vae.vae_dtype)
        moments = model.encoder(x)
        if hasattr(model, "quant_conv"):
            moments = model.quant_conv(moments)
        moments = moments.float()
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean.to(pixels_bchw.device), std.to(pixels_bchw.device)
