"""What every LayerFusion node shares: its menu category, how it words an error, and the input
checks that run before any work."""

from __future__ import annotations

import inspect

import torch

CATEGORY = "LayerFusion"
MAX_RESOLUTION = 16384


def advanced() -> dict[str, bool]:
    """``advanced=True`` for an input, where the host's schema knows it (current ComfyUI folds such inputs
    away; 0.3.75 has no such flag and shows them like the others)."""
    from comfy_api.latest import io

    return {"advanced": True} if "advanced" in inspect.signature(io.String.Input.__init__).parameters else {}


def node_error(node: str, input_name: str, problem: str, fix: str) -> ValueError:
    """An error for people: which node, which input, what was wrong, what to do."""
    problem = problem.rstrip(". ")
    return ValueError(f"{node}: input '{input_name}': {problem}{' ' if problem.endswith(('?', '!')) else '. '}{fix}")


def require_finite(node: str, input_name: str, tensor: torch.Tensor | None) -> None:
    """Refuse NaN or inf in an input tensor (IMAGE, MASK or a LATENT's samples), naming how many."""
    if tensor is None or not tensor.is_floating_point():
        return
    finite = torch.isfinite(tensor)
    if bool(finite.all()):
        return
    bad = tensor[~finite]
    nan, inf = int(torch.isnan(bad).sum()), int(torch.isinf(bad).sum())
    raise node_error(
        node, input_name, f"contains {nan} NaN and {inf} infinite values (of {tensor.numel()})",
        "The node before it produced them: often a VAE or model running in fp16 that overflowed (try --fp32-vae or "
        "--force-fp32), or a sampler that diverged (lower cfg or denoise).",
    )


def require_sdxl(node: str, model, input_name: str = "model") -> None:
    """Refuse a MODEL that is not an SDXL UNet (SD1.5, SD3, FLUX, an SDXL refiner...)."""
    import comfy.model_base

    inner = getattr(model, "model", None)
    if not isinstance(inner, comfy.model_base.SDXL):
        raise node_error(
            node, input_name, f"is a {type(inner).__name__} model, expected SDXL",
            "LayerDiffuse's weights and LayerFusion are made for SDXL: load an SDXL checkpoint (SDXL 1.0 or a model built "
            "on it, e.g. Juggernaut XL, Pony, Illustrious).",
        )
