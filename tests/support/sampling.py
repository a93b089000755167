"""Deterministic sampling with ComfyUI's own sampler, for in-process invariants (tier 2)."""

from __future__ import annotations

import torch

from layerfusion_dev.testnodes import tiny_sdxl


def fixed_cond(seed: int = 2, batch: int = 1) -> list:
    """A CONDITIONING of the tiny model's shape, from seeded noise (no text encoder needed)."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(batch, 77, tiny_sdxl.CLIP_L_WIDTH + tiny_sdxl.CLIP_G_WIDTH, generator=gen)
    pooled = torch.randn(batch, tiny_sdxl.CLIP_G_WIDTH, generator=gen)
    return [[context, {"pooled_output": pooled}]]


def sample(model, rows: int = 6, *, steps: int = 2, cfg: float = 5.0, size: int = 8, seed: int = 1) -> torch.Tensor:
    """Denoise ``rows`` latents ``[rows, 4, size, size]`` from seeded noise with euler; returns the
    final latents. Same inputs, same model -> the same tensor, bit for bit."""
    import comfy.sample

    latent = torch.zeros(rows, 4, size, size)
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed))
    positive, negative = fixed_cond(2), fixed_cond(3)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "normal", positive, negative, latent,
                               seed=seed, disable_pbar=True)


def changed_rows(a: torch.Tensor, b: torch.Tensor, tolerance: float) -> list[int]:
    """Rows whose largest absolute difference exceeds ``tolerance``."""
    return [r for r in range(a.shape[0]) if (a[r] - b[r]).abs().max().item() > tolerance]


def identical_rows(a: torch.Tensor, b: torch.Tensor) -> list[int]:
    return [r for r in range(a.shape[0]) if torch.equal(a[r], b[r])]
