"""Loading LayerDiffuse's transparent decoder and encoder, run under ComfyUI's model management.

Each file is read (safetensors only), loaded strictly by its own tensor names into a module built
with `comfy.ops`, and wrapped in a ModelPatcher, so ComfyUI loads it to the VAE device and offloads
it like any model; fp16 where the device supports it.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import torch

from .safetensors_io import WeightFileError, read_safetensors
from .transparent_vae import LatentOffsetEncoder, TransparentDecoder
from .weight_files import KNOWN_BY_NAME

EXPECTED_FILE = {
    TransparentDecoder: KNOWN_BY_NAME["vae_transparent_decoder.safetensors"],
    LatentOffsetEncoder: KNOWN_BY_NAME["vae_transparent_encoder.safetensors"],
}


@dataclasses.dataclass(frozen=True)
class ManagedModule:
    patcher: object  # comfy.model_patcher.ModelPatcher
    dtype: torch.dtype

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


def _build(module_cls: type[torch.nn.Module], path: str) -> torch.nn.Module:
    name = os.path.basename(path)
    expected = EXPECTED_FILE[module_cls]
    tensors = read_safetensors(path)
    import comfy.ops

    module = module_cls(ops=comfy.ops.disable_weight_init)
    wanted = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in tensors.items()}
    missing, unexpected = sorted(set(wanted) - set(got)), sorted(set(got) - set(wanted))
    wrong = [k for k in wanted if k in got and wanted[k] != got[k]]
    if missing or unexpected or wrong:
        if not set(wanted) & set(got):
            problem = f"none of its {len(got)} tensors is a {expected.kind.value} tensor (e.g. {next(iter(got), '?')!r})"
        elif wrong:
            problem = f"{len(wrong)} tensors have the wrong shape (e.g. {wrong[0]}: {got[wrong[0]]}, expected {wanted[wrong[0]]})"
        else:
            problem = f"{len(missing)} tensors are missing (e.g. {missing[:1]}) and {len(unexpected)} are unexpected (e.g. {unexpected[:1]})"
        raise WeightFileError(f"{name}: {problem}; expected LayerDiffuse's {expected.name} ({expected.url})")
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


def posterior_moments(vae, pixels_bchw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard deviation ``[B, 4, H/8, W/8]`` of ComfyUI VAE's posterior for RGB in [0, 1].

    Needs an AutoencoderKL-type VAE (SDXL's): its encoder gives the moments; ComfyUI's own
    `VAE.encode` returns only their mode."""
    import comfy.model_management

    model = getattr(vae, "first_stage_model", None)
    if model is None or not hasattr(model, "encoder") or not hasattr(model, "quant_conv"):
        raise TypeError("expected an SDXL VAE (a KL autoencoder); this VAE has no Gaussian posterior to offset")
    comfy.model_management.load_models_gpu([vae.patcher])
    with torch.inference_mode():
        x = vae.process_input(pixels_bchw).to(device=vae.device, dtype=vae.vae_dtype)
        moments = model.quant_conv(model.encoder(x)).float()
    mean, logvar = moments.chunk(2, dim=1)
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    return mean.to(pixels_bchw.device), std.to(pixels_bchw.device)
