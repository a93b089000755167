"""LayerFusion on a ComfyUI model: `apply_layerfusion` adds, on a clone, the attention patches
(attention.py), a SAMPLER_SAMPLE wrapper that runs one generation and an OUTER_SAMPLE wrapper that
makes the rows an inpainting mask holds equal the input latent exactly; `hold_photo` (LayerFusion
Background) adds the composite's hold to the photo.

The wrapper creates the generation's `FusionRun` (its one owner of state) and hands the run's UNet
calls a handler (``RUN_OPTION``, in the run's own copy of transformer_options, which ComfyUI hands
to every UNet call on whatever thread runs it). The handler decides per call whether to extract the
prior or blend, and in the prior pass runs the FG rows alone. After each phase the wrapper checks
that every patch ran (`HookPointError` otherwise: no silent no-op); when the run ends, its
`MaskRecord` goes into the model's `RecordSlot` for LayerFusion Masks.
"""

from __future__ import annotations

import dataclasses
import functools
import logging

import comfy.model_patcher
import comfy.patcher_extension
import torch

from ..fusion import photo
from ..fusion.run import FusionRun, Phase, RecordSlot
from ..fusion.settings import BlockKey, FusionSettings, PriorMode
from ..layout.rows import BatchLayoutError, Branch, RowSelector
from ..layout.streams import Layout, Stream
from .attention import BlendOutput, FusionCall, PriorProbe
from .calls import UnetArgs, call_rows, enable_layered_batch, run_call, take_rows
from .holds import BACKGROUND_NODE, DenoiseMasks, exact_holds
from .hook_points import hook_point_error
from .model_info import transformer_keys
from .options import CALL_OPTION, EOS_KEY, FUSION_OPTION, FUSION_WRAPPER_KEY, PLACEMENT_KEY, RUN_OPTION, set_transformer_option, transformer_option

log = logging.getLogger(__name__)
NODE = "LayerFusion Apply"


class FusionModelError(ValueError):
    """A model LayerFusion cannot be applied to; ``fix`` says what to do instead."""

    def __init__(self, problem: str, fix: str, input_name: str = "model") -> None:
        super().__init__(problem)
        self.fix = fix
        self.input_name = input_name  # the Apply node's input at fault


@dataclasses.dataclass(frozen=True)
class LayerFusionPatch:
    settings: FusionSettings
    keys: tuple[BlockKey, ...]  # every transformer block, where each run must have blended
    records: RecordSlot  # where this model's runs leave their MaskRecord (a clone gets its own)


class _PriorReady(Exception):
    """Ends the prior pass as soon as the structure prior exists."""


def _sigma(transformer_options: dict) -> float:
    return float(transformer_options["sigmas"].max()) if "sigmas" in transformer_options else float("inf")


def _fusion_call(run: FusionRun, executor, args: UnetArgs, transformer_options: dict, kwargs: dict) -> torch.Tensor:
    """Every UNet call of a LayerFusion run: decide extraction and blending; in the prior pass, run
    the FG rows alone (and stop the pass as soon as the prior exists)."""
    x = args[0]
    unet = getattr(executor, "class_obj", None)
    rows = call_rows(x, transformer_options, run.layout)
    sigma = _sigma(transformer_options)
    if run.phase is Phase.PRIOR_PASS:
        fg_rows = rows.selector.rows_for(Branch.FG)
        extract, _ = run.begin_call(sigma)
        only_fg = rows.only(RowSelector(fg_rows.numel(), rows.selector.chunks, (Stream.FG,), x.device))
        call = FusionCall(only_fg, run, unet, extract)
        fg_out = run_call(executor, only_fg, take_rows(args, fg_rows, x.shape[0]), {**transformer_options, CALL_OPTION: call},
                          take_rows(kwargs, fg_rows, x.shape[0]))
        if run.prior is not None:
            raise _PriorReady
        out = torch.zeros_like(x)
        out[fg_rows] = fg_out
        return out
    extract, blend = run.begin_call(sigma)
    call = FusionCall(rows, run, unet, extract, blend, run.blends_later(sigma))
    return run_call(executor, rows, args, {**transformer_options, CALL_OPTION: call}, kwargs)


def _positive_entry(guider, key: str):
    """``key`` of the first conditioning entry that has it, the positive first (None if none has)."""
    conds = getattr(guider, "conds", {}) or {}
    for name in ["positive", *[k for k in conds if k != "positive"]]:
        for cond in conds.get(name, []) or []:
            if key in cond:
                return cond[key]
    return None


def _eos(guider) -> tuple[int, ...]:
    """Each foreground prompt's EOS token, as LayerFusion Conditioning recorded them (K = how many)."""
    eos = _positive_entry(guider, EOS_KEY)
    if eos is None:
        raise ValueError(
            f"{NODE}: the positive conditioning does not come from LayerFusion Conditioning (which records the "
            "foreground prompt's end token); connect LayerFusion Conditioning's positive to the sampler."
        )
    return (int(eos),) if isinstance(eos, int) else tuple(int(i) for i in eos)


def _check_fusion_ran(run: FusionRun, keys: tuple[BlockKey, ...], phase: Phase) -> None:
    """After a phase of a LayerFusion run: the handler saw its UNet calls, the prior was taken, and
    every transformer block blended in attn1 and attn2 whenever a call blended."""
    if run.calls[phase] == 0:
        raise hook_point_error(NODE, "the sampler ran the UNet without LayerFusion's DIFFUSION_MODEL wrapper, so nothing "
                                     "was blended and the three streams ran independently")
    if run.prior is None:
        raise hook_point_error(NODE, f"the structure prior was never taken: the attn1 patch of block "
                                     f"{run.settings.structure_block} did not run")
    if run.blend_calls:
        missing = [(kind, key) for key in keys for kind in ("attn1", "attn2") if (kind, key) not in run.blended]
        if missing:
            raise hook_point_error(NODE, f"the blend did not run in {len(missing)} of {2 * len(keys)} attention layers "
                                         f"(e.g. {missing[0][0]} of block {missing[0][1]}): ComfyUI did not call the "
                                         "pack's attention output patches there")


def _check_sampler_input(noise: torch.Tensor, model_options: dict, layout: Layout) -> None:
    if noise.shape[0] % layout.per_set:  # before any step: the same check the first UNet call would make
        raise BatchLayoutError(
            f"{NODE}: the sampler's latent has {noise.shape[0]} rows, expected a multiple of {layout.per_set} ({layout.describe()}: "
            f"LayerFusion Conditioning has {layout.foregrounds} foreground prompt(s)). Start it with LayerFusion Empty Latent "
            "with that many foregrounds and do not change its batch size."
        )
    if "multigpu_clones" in model_options:
        raise ValueError(
            f"{NODE}: this model is spread over several GPUs (ComfyUI's multi-GPU clones), which run the "
            "positive and negative batches on different devices at the same time; LayerFusion's masks for both come "
            "from the foreground's positive rows of the same step, so it cannot run that way. Sample this model on one GPU."
        )


def _fusion_sample(executor, guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar,
                   *args, **kwargs):
    """SAMPLER_SAMPLE wrapper: one LayerFusion generation (the prior pass first, when chosen)."""
    model_options = extra_args["model_options"]
    patch: LayerFusionPatch = model_options["transformer_options"][FUSION_OPTION]
    eos = _eos(guider)
    _check_sampler_input(noise, model_options, Layout(len(eos)))
    settings = patch.settings
    if settings.hold is not None and denoise_mask is None:
        raise ValueError(
            f"{BACKGROUND_NODE}: the model holds the composite to a photo, but the sampler's latent carries none (no "
            "noise_mask). Connect the LATENT output of the same LayerFusion Background node to the sampler."
        )
    sampling = guider.inner_model.model_sampling
    steps = [float(s) for s in sigmas[:-1]]
    sigma_extract = max(sampling.percent_to_sigma(1.0 - settings.prior_at), min(steps) if steps else 0.0)
    run = FusionRun(settings, eos, sigma_extract,
                    sampling.percent_to_sigma(settings.blend_start), sampling.percent_to_sigma(settings.blend_end),
                    placement=_positive_entry(guider, PLACEMENT_KEY))
    run_options = {**model_options["transformer_options"], RUN_OPTION: functools.partial(_fusion_call, run)}
    run_model_options = {**model_options, "transformer_options": run_options}
    denoise_masks = None
    if denoise_mask is not None:
        sigma_hold = None if settings.hold is None else sampling.percent_to_sigma(settings.hold.start)
        denoise_masks = DenoiseMasks(run, sigma_hold, model_options.get("denoise_mask_function"))
        run_model_options["denoise_mask_function"] = denoise_masks
    extra_args = {**extra_args, "model_options": run_model_options}
    if settings.prior_mode is PriorMode.PRIOR_PASS:
        run.phase = Phase.PRIOR_PASS
        try:
            executor(guider, sigmas, extra_args, None, noise.clone(), latent_image, denoise_mask, True, *args, **kwargs)
        except _PriorReady:
            pass
        if steps:
            _check_fusion_ran(run, patch.keys, Phase.PRIOR_PASS)
        run.start_joint_run()
    out = executor(guider, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar, *args, **kwargs)
    if steps:
        _check_fusion_ran(run, patch.keys, Phase.JOINT)
        patch.records.publish(run.record())
    if denoise_masks is not None and steps:
        denoise_masks.hand_over()
    return out


def _own_record_slot(original: comfy.model_patcher.ModelPatcher, clone: comfy.model_patcher.ModelPatcher, *args, **kwargs) -> None:
    """ON_CLONE callback: the clone records its runs in a slot of its own, linked to the original's."""
    patch = fusion_patch(original)
    if patch is not None:
        set_transformer_option(clone, FUSION_OPTION, dataclasses.replace(patch, records=patch.records.child()))


def apply_layerfusion(model: comfy.model_patcher.ModelPatcher, settings: FusionSettings) -> comfy.model_patcher.ModelPatcher:
    """A clone of an SDXL ``model`` that runs LayerFusion on [fg, bg, blend] * N batches.
    Raises `FusionModelError` for a model it cannot patch."""
    import comfy.model_base

    if not isinstance(model.model, comfy.model_base.SDXL):
        raise FusionModelError(f"is a {type(model.model).__name__} model, expected SDXL", "LayerFusion works on SDXL checkpoints.")
    if fusion_patch(model) is not None:
        raise FusionModelError("already went through LayerFusion Apply",
                               "Use one LayerFusion Apply per model: connect the model from before the first one.")
    keys = transformer_keys(model)
    if not keys:
        raise FusionModelError("has no transformer blocks to blend", "LayerFusion works on SDXL checkpoints.")
    settings = dataclasses.replace(settings, structure_block=_structure_block(settings.structure_block, keys))
    patched = enable_layered_batch(model)
    patched.set_model_attn1_patch(PriorProbe("attn1"))
    patched.set_model_attn2_patch(PriorProbe("attn2"))
    patched.set_model_attn1_output_patch(BlendOutput("attn1"))
    patched.set_model_attn2_output_patch(BlendOutput("attn2"))
    set_transformer_option(patched, FUSION_OPTION, LayerFusionPatch(settings, tuple(keys), RecordSlot()))
    kind = comfy.patcher_extension.WrappersMP.SAMPLER_SAMPLE
    patched.remove_wrappers_with_key(kind, FUSION_WRAPPER_KEY)
    patched.add_wrapper_with_key(kind, FUSION_WRAPPER_KEY, _fusion_sample)
    outer = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    patched.remove_wrappers_with_key(outer, FUSION_WRAPPER_KEY)
    patched.add_wrapper_with_key(outer, FUSION_WRAPPER_KEY, exact_holds)
    patched.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_CLONE, FUSION_WRAPPER_KEY, _own_record_slot)
    log.info("LayerFusion on %d transformer blocks; structure prior from %s; %s", len(keys), settings.structure_block, settings)
    return patched


def _structure_block(wanted: BlockKey, keys: list[BlockKey]) -> BlockKey:
    """The block the structure prior comes from: ``wanted`` if the model has it; SDXL's default falls back
    to the model's last block (the same role in SSD-1B, Vega, the tiny test models); any other is refused."""
    if wanted in keys:
        return wanted
    if wanted == FusionSettings.structure_block:
        return keys[-1]
    names = ", ".join(" ".join(map(str, key)) for key in (keys[0], keys[len(keys) // 2], keys[-1]))
    raise FusionModelError(f"names block {' '.join(map(str, wanted))}, which this model does not have ({len(keys)} blocks, e.g. {names})",
                           f"Name one of its blocks, or leave it at SDXL's '{' '.join(map(str, FusionSettings.structure_block))}'.",
                           input_name="structure_block")


def fusion_patch(model: comfy.model_patcher.ModelPatcher) -> LayerFusionPatch | None:
    return transformer_option(model, FUSION_OPTION)


def hold_photo(model: comfy.model_patcher.ModelPatcher, hold: photo.PhotoHold | None) -> comfy.model_patcher.ModelPatcher:
    """A clone of a LayerFusion ``model`` whose runs hold the composite to the photo as ``hold``
    says (None: the composite is free; the background rows are held by the latent's mask anyway).
    Raises `FusionModelError` for a model without LayerFusion Apply."""
    if fusion_patch(model) is None:
        raise FusionModelError("has no LayerFusion Apply", "Connect the model from LayerFusion Apply.")
    held = model.clone()  # its own record slot, from the clone callback
    patch = fusion_patch(held)
    set_transformer_option(held, FUSION_OPTION, dataclasses.replace(patch, settings=dataclasses.replace(patch.settings, hold=hold)))
    return held

