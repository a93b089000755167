"""The holds of an inpainting mask in a LayerFusion run (LayerFusion Background): the run's
``denoise_mask_function`` (`DenoiseMasks`, after any other pack's) holds the blend rows outside the
band (fusion/photo.py) and remembers the mask of the last step; ComfyUI's sampler then ends the held
elements at the input latent up to float rounding (its last step and the latent scaling round trip),
and the OUTER_SAMPLE wrapper (`exact_holds`) puts the input latent's own values there. The two meet
through a context variable the wrapper sets for the length of one sampling call.
"""

from __future__ import annotations

import contextvars
import dataclasses
import logging
from collections.abc import Callable

import comfy.utils
import torch

from ..fusion import photo
from ..fusion.run import FusionRun, Phase
from .hook_points import hook_point_error

log = logging.getLogger(__name__)
NODE = "LayerFusion Apply"
BACKGROUND_NODE = "LayerFusion Background"
HOLD_TOLERANCE = 1e-3  # a held element further than this (relative) from the input: the sampler did not hold it


@dataclasses.dataclass
class FinalMask:
    """Where a run leaves the inpainting mask of its last step, for `exact_holds`."""

    mask: torch.Tensor | None = None


_FINAL_MASK: contextvars.ContextVar[FinalMask | None] = contextvars.ContextVar("layerfusion_final_mask", default=None)


@dataclasses.dataclass
class DenoiseMasks:
    """The run's ``denoise_mask_function``: any earlier one first, then, from the hold's start on and
    once the prior exists, the blend rows held outside the band; remembers the joint run's last mask."""

    run: FusionRun
    sigma_hold: float | None  # the hold starts at this sigma (None: no hold)
    previous: Callable | None
    last: torch.Tensor | None = None

    def __call__(self, sigma: torch.Tensor, denoise_mask: torch.Tensor, extra_options: dict | None = None, **kwargs) -> torch.Tensor:
        if self.previous is not None:
            denoise_mask = self.previous(sigma, denoise_mask, extra_options=extra_options)
        run = self.run
        if run.phase is not Phase.JOINT:
            return denoise_mask
        hold = run.settings.hold
        if (hold is not None and self.sigma_hold is not None and run.prior is not None and run.settings.switches.any
                and float(sigma.max()) <= self.sigma_hold):
            run.band = photo.hold_band(run.prior, run.prior_grid, run.last_content.get(run.settings.structure_block),
                                       run.settings.d, run.settings.norm_quantile, tuple(denoise_mask.shape[-2:]), hold,
                                       run.layout)
            denoise_mask = photo.held_blend_rows(denoise_mask, run.band, run.layout)
        self.last = denoise_mask
        return denoise_mask

    def hand_over(self) -> None:
        """After the joint run: the last step's mask to `exact_holds`; a hook that did not run is an error."""
        final = _FINAL_MASK.get()
        if self.last is None:
            raise hook_point_error(NODE, "the sampler never called the run's denoise_mask_function (ComfyUI's inpainting mask "
                                         "hook), so the composite was not held to the photo")
        if final is None:
            raise hook_point_error(NODE, "LayerFusion's OUTER_SAMPLE wrapper did not run, so the latent rows the inpainting "
                                         "mask holds were not made exactly the input latent")
        final.mask = self.last


def exact_holds(executor, noise, latent_image, sampler, sigmas, denoise_mask=None, *args, **kwargs):
    """OUTER_SAMPLE wrapper: where the last step's inpainting mask is 0, the output is the input
    latent itself (the sampler's own result there differs from it by float rounding only; a larger
    difference means the sampler did not hold those elements, and is logged)."""
    if denoise_mask is None:
        return executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
    final = FinalMask()
    token = _FINAL_MASK.set(final)
    try:
        out = executor(noise, latent_image, sampler, sigmas, denoise_mask, *args, **kwargs)
    finally:
        _FINAL_MASK.reset(token)
    mask = final.mask if final.mask is not None else comfy.utils.reshape_mask(denoise_mask, out.shape)
    if tuple(mask.shape) != tuple(out.shape) or tuple(latent_image.shape) != tuple(out.shape):
        log.warning("%s: the inpainting mask %s or the input %s does not match the sampler's output %s; held rows "
                    "are left as the sampler made them", NODE, tuple(mask.shape), tuple(latent_image.shape), tuple(out.shape))
        return out
    held = (mask == 0).to(out.device)
    if not bool(held.any()):
        return out
    source = latent_image.to(device=out.device, dtype=out.dtype)
    drift = float((out - source).abs().masked_select(held).max())
    scale = 1.0 + float(source.abs().masked_select(held).max())
    if drift > HOLD_TOLERANCE * scale:
        log.warning("%s: the sampler moved held latent elements by up to %.3g (it may ignore inpainting masks); they are "
                    "set back to the input latent", NODE, drift)
    return torch.where(held, source, out)
